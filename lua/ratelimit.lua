-- Atomic decisions over the descriptors of one request, or of each request of a batch.
--
-- Loaded after the algorithm files (token_bucket.lua, fixed_window.lua), which
-- define the tables used below; ratelimit_service/limiter.py joins them.
--
-- One request:
--   KEYS[i]  bucket key of descriptor i
--   ARGV[1]  mode: 'json' | 'reserve' | 'settle'
--   ARGV[..] six fields per descriptor: algorithm ('tb' | 'fw'), capacity,
--            period (seconds), hits, max_hits (-1: not elastic), shadow ('1' | '0')
-- A batch (many requests in one call, decided one after the other):
--   ARGV[1]  'batch', then per request: its mode, its number of descriptors n,
--            and its n x 6 fields; KEYS holds the requests' keys in the same order.
--   Returns one line of text per request: the numbers of the reply below,
--   separated by spaces, or, if deciding that request raised an error, '!' and
--   the error's text (that request wrote nothing: every read comes before the
--   first write). The other requests are decided.
--
-- Modes:
--   json     envoy's /json: every descriptor is charged its hits even when over
--            the limit; an over-limit charge stops adding debt at twice the
--            capacity, so a client that keeps calling is locked out for at most
--            one period after it stops (envoy's fixed window has the same bound).
--   reserve  all or nothing: charged only if every non-shadow descriptor can
--            cover its hits. Elastic descriptors (max_hits >= 0) share one grant
--            g = min(max_hits, remaining) over them and are each charged g.
--   settle   unconditional signed adjustment: positive may go into debt,
--            negative refunds down to an empty level (never above capacity).
-- A descriptor needs remaining >= hits to pass; hits = 0 (check only) needs
-- remaining > 0. Descriptors that share a bucket (e.g. through a share_threshold
-- wildcard) are charged one after the other, as separate calls would be.
--
-- Returns {granted, then per descriptor: code (1 OK, 2 OVER_LIMIT),
--          remaining (floor, negative in debt), reset_ms (until the bucket is
--          full again), retry_ms (until the same request could pass, 0 if it did;
--          for settle, until a check would pass)}.
-- granted is the elastic grant g, or -1 when no descriptor is elastic.
local algorithms = {tb = token_bucket, fw = fixed_window}
local CHECK_ONLY_NEED = 0.001

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function passes(d, level, need)
  local remaining = d.capacity - level
  if need > 0 then
    return remaining >= need
  end
  return remaining > 0
end

local function ms(seconds, d)
  if seconds == nil then
    seconds = d.period
  end
  return math.ceil(seconds * 1000)
end

-- Milliseconds until a request needing `need` would pass at this level. A need
-- above capacity never passes on its own: then, until the bucket is full again.
local function retry_ms(d, level, need)
  if need <= 0 then
    need = CHECK_ONLY_NEED
  end
  if d.capacity <= 0 then
    return ms(nil, d)
  end
  local target = d.capacity - need
  if target < 0 then
    target = 0
  end
  return ms(d.algo.wait(now, d.capacity, d.period, level, target), d)
end

-- The descriptors of one request: `count` keys from KEYS[first_key], their
-- fields from ARGV[first_arg].
local function read_descriptors(first_key, first_arg, count)
  local descriptors = {}
  for i = 1, count do
    local at = first_arg + (i - 1) * 6
    local algo = algorithms[ARGV[at]]
    local period = tonumber(ARGV[at + 2])
    local hits = tonumber(ARGV[at + 3])
    descriptors[i] = {
      algo = algo, key = algo.key(KEYS[first_key + i - 1], now, period), capacity = tonumber(ARGV[at + 1]),
      period = period, hits = hits, amount = hits, max_hits = tonumber(ARGV[at + 4]),
      shadow = ARGV[at + 5] == '1',
    }
  end
  return descriptors
end

-- A level of zero is a full bucket: no key. Otherwise the key lives until the
-- bucket would be full again.
local function store(d, level)
  if level <= 0 then
    redis.call('DEL', d.key)
    return
  end
  local ttl_ms = ms(d.algo.wait(now, d.capacity, d.period, level, 0), d)
  redis.call('SET', d.key, d.algo.encode(level, now), 'PX', math.max(ttl_ms, 1))
end

-- Levels as stored before this request, read once per bucket.
local function stored_level(stored, d)
  local level = stored[d.key]
  if level == nil then
    level = d.algo.level(redis.call('GET', d.key), now, d.capacity, d.period)
    stored[d.key] = level
  end
  return level
end

-- The elastic grant: each elastic descriptor bounds it by its max_hits and,
-- unless in shadow mode, by its share of what its bucket has left. Every elastic
-- descriptor must allow the largest elastic hits (the least the caller accepts);
-- those whose bound is below it are the ones that tripped.
local function elastic_grant(descriptors, stored)
  local fixed, sharing = {}, {}
  local least = 0
  for _, d in ipairs(descriptors) do
    if d.max_hits >= 0 then
      sharing[d.key] = (sharing[d.key] or 0) + 1
      least = math.max(least, d.hits)
    else
      fixed[d.key] = (fixed[d.key] or 0) + d.hits
    end
  end
  local granted = -1
  for _, d in ipairs(descriptors) do
    if d.max_hits >= 0 then
      d.bound = d.max_hits
      if not d.shadow then
        local room = d.capacity - stored_level(stored, d) - (fixed[d.key] or 0)
        d.bound = math.min(d.bound, math.max(0, math.floor(room / sharing[d.key])))
      end
      d.least = least
      if granted < 0 or d.bound < granted then
        granted = d.bound
      end
    end
  end
  return granted
end

local function charged(mode, d, level, ok)
  if d.amount == 0 or d.capacity <= 0 then
    return level
  end
  local after = level + d.amount
  if mode == 'settle' then
    return math.max(after, 0)
  end
  if not ok then
    return math.min(after, math.max(level, 2 * d.capacity))
  end
  return after
end

-- One request, decided and stored; returns its reply.
local function decide(mode, descriptors)
  local stored = {}
  local granted = -1
  if mode == 'reserve' then
    granted = elastic_grant(descriptors, stored)
  end

  -- Decide each descriptor in order against its bucket as the earlier ones left it.
  local levels, owner = {}, {}
  local admitted = true
  for _, d in ipairs(descriptors) do
    local before = levels[d.key]
    if before == nil then
      before = stored_level(stored, d)
    end
    if mode == 'settle' then
      d.ok = true
    elseif mode == 'reserve' and d.max_hits >= 0 then
      d.amount = granted
      d.hits = d.least
      d.ok = d.bound >= d.least and passes(d, before, granted)
    else
      d.ok = passes(d, before, d.hits)
    end
    d.after = charged(mode, d, before, d.ok)
    levels[d.key], owner[d.key] = d.after, d
    if not d.ok and not d.shadow then
      admitted = false
    end
  end

  local commit = mode ~= 'reserve' or admitted
  if commit then
    for key, level in pairs(levels) do
      if level ~= stored[key] then
        store(owner[key], level)
      end
    end
  end

  local reply = {granted}
  for _, d in ipairs(descriptors) do
    local level = d.after
    if not commit then
      level = stored[d.key]
    end
    local code, retry = 1, 0
    if mode == 'settle' then
      if not passes(d, level, 0) then
        code, retry = 2, retry_ms(d, level, 0)
      end
    elseif not d.ok then
      code = 2
      retry = retry_ms(d, level, d.hits)
    end
    reply[#reply + 1] = code
    reply[#reply + 1] = math.floor(d.capacity - level)
    reply[#reply + 1] = ms(d.algo.wait(now, d.capacity, d.period, level, 0), d)
    reply[#reply + 1] = retry
  end
  return reply
end

-- redis.call raises a table {err = text}; Lua's own errors are strings.
local function error_text(e)
  if type(e) == 'table' then
    e = e.err or e.message
  end
  return (string.gsub(tostring(e), '\n', ' '))
end

local function decide_at(mode, first_key, first_arg, count)
  return decide(mode, read_descriptors(first_key, first_arg, count))
end

-- A reply as text, each number as the integer Redis would have replied:
-- concat prints numbers with %.14g, which would round the large ones.
local function reply_text(reply)
  for i, v in ipairs(reply) do
    if v >= 1e14 or v <= -1e14 then
      reply[i] = string.format('%d', v)
    end
  end
  return table.concat(reply, ' ')
end

-- One line per request, in order: its reply's numbers, or '!' and the error
-- that stopped it. Text, because one string is far cheaper for the service to
-- read than a nested array of integers.
local function decide_batch()
  local lines = {}
  local at, first_key = 2, 1
  while at <= #ARGV do
    local mode, count = ARGV[at], tonumber(ARGV[at + 1])
    local ok, reply = pcall(decide_at, mode, first_key, at + 2, count)
    if ok then
      lines[#lines + 1] = reply_text(reply)
    else
      lines[#lines + 1] = '!' .. error_text(reply)
    end
    at = at + 2 + count * 6
    first_key = first_key + count
  end
  return table.concat(lines, '\n')
end

if ARGV[1] == 'batch' then
  return decide_batch()
end
return decide(ARGV[1], read_descriptors(1, 2, #KEYS))
