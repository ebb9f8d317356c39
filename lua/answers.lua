-- The Idempotency-Key answers' time buckets (the layout: purchase.lua, "The answers"), shared by
-- purchase.lua and settle.lua: ticketd sends this text in front of each of them, as one script.
-- Both pass the <answers>:widths key as KEYS[10].

-- The answers' buckets for a call at `now` with key lifetime `life`: the names of the buckets a
-- record that still counts can be in, and the bucket this call writes (name, its width and
-- lifetime, and its expiry). A width's buckets hold records written at most width + its
-- writers' lifetime ago, so a call reads at most a few of each width.
local function answer_buckets(now, life)
  local prefix = string.sub(KEYS[10], 1, -7)
  local names, seen = {}, {}
  local live = redis.call('ZRANGEBYSCORE', KEYS[10], '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #live, 2 do
    local w, l = string.match(live[i], '^(%d+):(%d+)$')
    w, l = tonumber(w), tonumber(l)
    -- From the width's newest bucket (its expiry says which), not only from now's: a clock
    -- that stepped back (a failover to a replica behind) must still find the last answers.
    -- (At most 64 buckets of a width: a score nothing wrote cannot make a call scan forever.)
    local last = math.max(math.floor(now / w), math.floor((tonumber(live[i + 1]) - l) / w) - 1)
    local first = math.max(math.floor((now - math.min(life, w + l)) / w), last - 63)
    for b = last, first, -1 do
      local name = prefix .. w .. ':' .. b
      if not seen[name] then
        seen[name] = true
        names[#names + 1] = name
      end
    end
  end
  local width = math.max(math.ceil(life / 2), 1000)
  local b = math.floor(now / width)
  local current = prefix .. width .. ':' .. b
  if not seen[current] then
    names[#names + 1] = current
  end
  return {
    names = names,
    current = current,
    member = width .. ':' .. life,
    expiry = (b + 1) * width + life,
    now = now,
  }
end

-- Records a batch's new answers (field, value pairs) in the current bucket, and keeps the bucket
-- and its width's entry alive as long as the newest of them counts.
local function record_answers(buckets, answers)
  local current, expiry = buckets.current, buckets.expiry
  redis.call('HSET', current, unpack(answers))
  redis.call('PEXPIREAT', current, expiry, 'NX')
  redis.call('PEXPIREAT', current, expiry, 'GT')
  redis.call('ZADD', KEYS[10], 'GT', expiry, buckets.member)
  redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', buckets.now)
  redis.call('PEXPIREAT', KEYS[10], expiry, 'NX')
  redis.call('PEXPIREAT', KEYS[10], expiry, 'GT')
end
