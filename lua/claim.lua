-- Heartbeat and top-up of one instance's fallback reserves, for one event or (on a single
-- Redis, where a script may take keys of any slot) several.
--
-- Eight keys per event; for event i, k = 8(i-1):
-- KEYS[k+1] event:{id}:tickets               the shared pool
-- KEYS[k+2] event:{id}:reserve:<instance>    LIST: tickets this instance holds back
-- KEYS[k+3] event:{id}:leases                ZSET instance -> lease expiry (unix ms, Redis clock)
-- KEYS[k+4] event:{id}:reserved              STRING: tickets held in all live reserves
-- KEYS[k+5] event:{id}:meta                  present once the event is seeded
-- KEYS[k+6] event:{id}:held                  HASH instance -> tickets of its held-back reserve
-- KEYS[k+7] event:{id}:stale                 SET of tickets sold by a late settlement
-- KEYS[k+8] event:{id}:reserve_gen           HASH instance -> generation of its reserve list
-- ARGV[1] instance, ARGV[2] reserve size wanted, ARGV[3] lease (ms), then for event i:
-- ARGV[2+2i] the reserve length the instance believes Redis holds, ARGV[3+2i] the generation of
-- the list it last acted on (-1: none)
--
-- For each event: renews the lease. A reserve that was held back (quarantine.lua) while this
-- instance could not renew comes back to it: the instance settled its journal just before this
-- call, so it knows every ticket of the list it sold. Moves tickets from the pool into the
-- reserve only while the pool holds more than four reserves' worth, so reserves never take the
-- last tickets of a sale. Each event's part is what a call for it alone does.
--
-- Every change of the list's contents here (a top-up, a stale ticket taken out) counts up the
-- list's generation. A reply the instance never acted on (lost after the script ran, or a call
-- that failed in a later event's part: Redis keeps what the script wrote before the error, and
-- a client may send a call again after a reconnect) can hide a change at a length that looks
-- unchanged, so the instance names the generation it acted on, and a list of another
-- generation is sent whole.
--
-- Returns, event after event, {status, now ms, pool length, moved, taken back, listed,
-- generation, ids, leases, the ids..., the leases...}: status 1, or -2 when the event is not in
-- Redis (then nothing is written). listed is 1 when the ids are the whole reserve (possibly
-- none: an empty reserve is news too), sent only when the reserve changed, its length is not
-- what the instance believes or its generation not the one it acted on, so a plain heartbeat
-- stays small; 0 otherwise. The leases are the other instances' (instance, expiry) pairs, for
-- the caller's watch of expired ones.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local me, size, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}

local function leases(key)
  local found = {}
  local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for j = 1, #all, 2 do
    if all[j] ~= me then
      found[#found + 1] = all[j]
      found[#found + 1] = all[j + 1]
    end
  end
  return found
end

local function emit(head, ids, others)
  for _, v in ipairs(head) do
    out[#out + 1] = v
  end
  out[#out + 1] = #ids
  out[#out + 1] = #others / 2
  for _, id in ipairs(ids) do
    out[#out + 1] = id
  end
  for _, v in ipairs(others) do
    out[#out + 1] = v
  end
end

local function claim(k, believed, known)
  if redis.call('EXISTS', KEYS[k + 5]) == 0 then
    emit({-2, 0, 0, 0, 0, 0, 0}, {}, leases(KEYS[k + 3]))
    return
  end
  -- Only an integer, as HINCRBY takes it: anything else fails here, before any write.
  local raw = redis.call('HGET', KEYS[k + 8], me) or '0'
  if not string.match(raw, '^%-?%d+$') then
    error('not a generation in ' .. KEYS[k + 8] .. ' ' .. me)
  end
  local gen = tonumber(raw)
  -- Counted up before the list (or the pool it takes from) is first written: a script that
  -- fails after a write, on a damaged key, then leaves no change under the old generation.
  local bumped = false
  local function bump()
    if not bumped then
      bumped = true
      gen = redis.call('HINCRBY', KEYS[k + 8], me, 1)
    end
  end
  redis.call('ZADD', KEYS[k + 3], now + lease, me)
  local back = 0
  if redis.call('HEXISTS', KEYS[k + 6], me) == 1 then
    redis.call('HDEL', KEYS[k + 6], me)
    back = redis.call('LLEN', KEYS[k + 2])
    redis.call('INCRBY', KEYS[k + 4], back)
  end
  local stale = redis.call('EXISTS', KEYS[k + 7]) == 1
  if stale then
    -- Rare: tickets of this reserve that a late settlement recorded as sold.
    for _, id in ipairs(redis.call('LRANGE', KEYS[k + 2], 0, -1)) do
      if redis.call('SREM', KEYS[k + 7], id) == 1 then
        bump()
        redis.call('LREM', KEYS[k + 2], 1, id)
        redis.call('DECRBY', KEYS[k + 4], 1)
      end
    end
  end
  local have = redis.call('LLEN', KEYS[k + 2])
  local pool = redis.call('LLEN', KEYS[k + 1])
  local moved = 0
  local want = size - have
  if want > 0 and pool > 4 * size then
    bump()
    local ids = redis.call('LPOP', KEYS[k + 1], want)
    if ids and stale then
      local fresh = {}
      for _, id in ipairs(ids) do
        if redis.call('SREM', KEYS[k + 7], id) == 0 then
          fresh[#fresh + 1] = id
        end
      end
      ids = #fresh > 0 and fresh
    end
    if ids then
      redis.call('RPUSH', KEYS[k + 2], unpack(ids))
      redis.call('INCRBY', KEYS[k + 4], #ids)
      moved = #ids
    end
    pool = redis.call('LLEN', KEYS[k + 1])
  end
  local ids = {}
  local listed = 0
  if bumped or have ~= believed or gen ~= known then
    listed = 1
    ids = redis.call('LRANGE', KEYS[k + 2], 0, -1)
  end
  emit({1, now, pool, moved, back, listed, gen}, ids, leases(KEYS[k + 3]))
end

for i = 1, #KEYS / 8 do
  claim(8 * (i - 1), tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i]))
end
return out
