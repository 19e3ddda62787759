-- Buckets as one request sees them: every read first, every write at the end.
--
-- Reads all come before the first write, so a request that Redis fails (a key
-- of the wrong type, a corrupt value) has written nothing; in a batch it fails
-- alone.
--
-- The reservations still held on a bucket live beside it (reservations.lua):
--   <bucket>:r  HASH  reservation id -> the amount it holds on this bucket
--   <bucket>:l  ZSET  reservation id -> its lease's deadline (ms)
-- Before a bucket's level is used, the leases whose deadline has passed are
-- given back (their amounts leave the level, which never goes below 0) and
-- dropped. An abandoned reservation thus returns by itself, with no scan over
-- other keys, the first time anything looks at its bucket after its lease.

local ALGORITHMS = {tb = token_bucket, fw = fixed_window, cal = calendar}
local loaded_algorithms = {}

-- The algorithm named by its code, built the first time this call needs it.
local function algorithm(code)
  local built = loaded_algorithms[code]
  if not built then
    built = ALGORITHMS[code]()
    loaded_algorithms[code] = built
  end
  return built
end

local MAX_MS = 315360000000     -- 10 years: the longest TTL written, or duration reported
local MAX_LEVEL = 2 ^ 60        -- levels stay integers Redis and %d can print
local MAX_LEASE_MS = 86400000   -- 1 day: the longest lease (the service refuses longer)
local LEASE_MARGIN_MS = 60000   -- :r and :l outlive their bucket and its leases by this
local EXPIRE_BATCH = 256        -- expired leases given back per bucket and call; the rest next time

-- The clock: Redis server time plus the service's TOLLGATE_CLOCK_OFFSET (ARGV[1]),
-- read once per call. Lease deadlines are in its milliseconds.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + tonumber(ARGV[1])
local now_ms = math.floor(now * 1000)

-- Whole milliseconds, rounded up, in [0, MAX_MS].
local function ms(seconds)
  local v = math.ceil(seconds * 1000)
  if v ~= v or v < 0 then
    return 0
  end
  return math.min(v, MAX_MS)
end

-- An integer as Redis reads one: Lua's own tostring would write 1e+15.
local function int_text(n)
  return string.format('%d', n)
end

local function new_buckets()
  return {list = {}, by_key = {}}
end

-- The level once the expired leases have given back what they hold; `keep` is
-- a reservation the caller settles itself (its lease is left alone).
local function give_back_expired(b, level, keep)
  local ids = redis.call('ZRANGEBYSCORE', b.key .. ':l', '-inf', now_ms, 'LIMIT', 0, EXPIRE_BATCH)
  local gone = {}
  for _, id in ipairs(ids) do
    if id ~= keep then
      gone[#gone + 1] = id
    end
  end
  if #gone == 0 then
    return level
  end
  for _, amount in ipairs(redis.call('HMGET', b.key .. ':r', unpack(gone))) do
    level = level - (tonumber(amount) or 0)
  end
  b.expired = gone
  return math.max(level, 0)
end

-- The bucket of `d` (a descriptor with its key and limit), read once per request.
local function bucket(buckets, d, keep)
  local b = buckets.by_key[d.key]
  if b then
    return b
  end
  b = {key = d.key, d = d}
  local level = d.algo.level(redis.call('GET', d.key), now, d)
  b.loaded = level
  local first = redis.call('ZRANGE', d.key .. ':l', 0, 0, 'WITHSCORES')
  if first[1] then
    b.leased = true
    if tonumber(first[2]) <= now_ms then
      level = give_back_expired(b, level, keep)
    end
  end
  b.base, b.level = level, level
  buckets.by_key[d.key] = b
  buckets.list[#buckets.list + 1] = b
  return b
end

local function read_all(buckets, checks, keep)
  for _, d in ipairs(checks) do
    bucket(buckets, d, keep)
  end
end

-- A level plus `amount` (negative to give back), never below 0 nor past MAX_LEVEL.
local function added(level, amount)
  return math.min(math.max(level + amount, 0), MAX_LEVEL)
end

-- A level of zero is a full bucket: no key. Otherwise the key lives as its
-- algorithm says (until drained, or the window's end). Returns the TTL set.
local function store(b)
  local d, level = b.d, b.level
  local ttl = 0
  if level > 0 then
    ttl = ms(d.algo.ttl(now, d, level))
  end
  if ttl <= 0 then
    redis.call('DEL', b.key)
  else
    redis.call('SET', b.key, d.algo.encode(level, now), 'PX', int_text(ttl))
  end
  return ttl
end

-- :r and :l must outlive the level they correct and every lease in them: the
-- bucket's TTL plus the longest lease (any deadline is at most that far).
local function keep_leases(b, ttl)
  local keep = int_text(ttl + MAX_LEASE_MS + LEASE_MARGIN_MS)
  redis.call('PEXPIRE', b.key .. ':r', keep)
  redis.call('PEXPIRE', b.key .. ':l', keep)
end

local function drop_leases(b, ids)
  redis.call('ZREM', b.key .. ':l', unpack(ids))
  redis.call('HDEL', b.key .. ':r', unpack(ids))
end

-- Writes what the request changed, bucket by bucket in the order first read:
-- expired and settled leases dropped, new holds added, changed levels stored.
local function commit(buckets)
  for _, b in ipairs(buckets.list) do
    if b.expired then
      drop_leases(b, b.expired)
    end
    if b.settled then
      drop_leases(b, {b.settled})
    end
    local hold = b.hold
    if hold then
      redis.call('HSET', b.key .. ':r', hold.id, int_text(hold.amount))
      redis.call('ZADD', b.key .. ':l', int_text(hold.deadline), hold.id)
      b.leased = true
    end
    if b.level ~= b.loaded or hold then
      local ttl = store(b)
      -- A bucket's TTL grows only with its level (a window's never moves), so
      -- :r and :l need more time only for a new lease or a higher level.
      if b.leased and (hold or b.level > b.loaded) then
        keep_leases(b, ttl)
      end
    end
  end
end

-- Statuses: what a request is told about a descriptor's bucket.
local CHECK_ONLY_NEED = 0.001
local NONE, OPEN, CLOSED = 0, 1, 2 -- a reservation's record before the call, as replies report it

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

-- A reply whose statuses say whether a check (hits 0) would pass on each bucket now.
local function check_reply(state, checks, buckets)
  local reply = {-1, state, now_ms}
  for _, d in ipairs(checks) do
    local level = buckets.by_key[d.key].level
    if passes(d, level, 0) then
      add_status(reply, d, level, 1, 0)
    else
      add_status(reply, d, level, 2, retry_ms(d, level, 0))
    end
  end
  return reply
end
