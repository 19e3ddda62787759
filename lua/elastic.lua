-- Elastic grants: a reservation that does not know its size yet (a request
-- without max_tokens) takes the largest grant g its budgets can hold.
--
-- An elastic descriptor (per_grant > 0) is charged hits + ceil(g * per_grant):
-- g in output tokens, per_grant what one costs in this limit's unit (1 for a
-- token budget, e.g. 0.6 micro-dollars for a dollar budget). One g serves all
-- of a request's elastic descriptors, so one decision covers a token budget and
-- a dollar budget together. A bucket bounds g when one of its elastic
-- descriptors is enforced (not shadow_mode); its room is what it has left less
-- every other charge of the request on it. Several elastic descriptors on one
-- bucket are summed: g is the largest with sum(ceil(g * p)) <= room.

local function elastic()
  -- What the elastic descriptors `rates` (their per_grant values) cost together for g.
  local function cost(rates, g)
    local c = 0
    for _, p in ipairs(rates) do
      c = c + math.ceil(g * p)
    end
    return c
  end

  -- The largest g in [0, cap] whose cost fits in `room`; -1 when nothing fits.
  local function largest_grant(rates, room, cap)
    if room < 0 then
      return -1
    end
    local total = 0
    for _, p in ipairs(rates) do
      total = total + p
    end
    local hi = math.min(cap, math.floor(room / total))
    if cost(rates, hi) <= room then
      return hi
    end
    -- Each ceil adds less than one, so cost(lo) <= lo * total + #rates <= room.
    local lo = math.min(hi, math.max(0, math.floor((room - #rates) / total)))
    while hi - lo > 1 do
      local mid = math.floor((lo + hi) / 2)
      if cost(rates, mid) <= room then
        lo = mid
      else
        hi = mid
      end
    end
    -- Floating point may round a product up past an integer: step down until it fits.
    while lo > 0 and cost(rates, lo) > room do
      lo = lo - 1
    end
    return lo
  end

  -- The grant for the request (nil when it has no elastic descriptor; -1 when a
  -- bucket cannot even hold its fixed charges), capped by `cap`; sets each
  -- descriptor's d.room_grant, the largest grant its bucket allows (nil where
  -- the bucket does not bound g).
  local function elastic_grant(checks, buckets, cap)
    local on, any = {}, false
    for _, d in ipairs(checks) do
      local e = on[d.key]
      if not e then
        e = {fixed = 0, rates = {}}
        on[d.key] = e
      end
      e.fixed = e.fixed + d.hits
      if d.per_grant > 0 then
        any = true
        e.rates[#e.rates + 1] = d.per_grant
        e.bounds = e.bounds or not d.shadow
      end
    end
    if not any then
      return nil
    end
    local g = cap
    for _, b in ipairs(buckets.list) do
      local e = on[b.key]
      if e and e.bounds then
        e.grant = largest_grant(e.rates, b.d.capacity - b.level - e.fixed, cap)
        g = math.min(g, e.grant)
      end
    end
    for _, d in ipairs(checks) do
      d.room_grant = on[d.key].grant
    end
    return g
  end

  -- An elastic descriptor's charge for grant g (capped like hits: 2^53).
  local function elastic_charge(d, g)
    return math.min(d.hits + math.ceil(math.max(g, 0) * d.per_grant), 2 ^ 53)
  end

  return elastic_grant, elastic_charge
end
