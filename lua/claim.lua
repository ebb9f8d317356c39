-- Heartbeat and top-up of one instance's fallback reserve for one event.
--
-- KEYS[1] event:{id}:tickets               the shared pool
-- KEYS[2] event:{id}:reserve:<instance>    LIST: tickets this instance holds back
-- KEYS[3] event:{id}:leases                ZSET instance -> lease expiry (unix ms, Redis clock)
-- KEYS[4] event:{id}:reserved              STRING: tickets held in all live reserves
-- KEYS[5] event:{id}:meta                  present once the event is seeded
-- KEYS[6] event:{id}:held                  HASH instance -> tickets of its held-back reserve
-- KEYS[7] event:{id}:stale                 SET of tickets sold by a late settlement
-- ARGV[1] instance, ARGV[2] reserve size wanted, ARGV[3] lease (ms),
-- ARGV[4] reserve length the instance believes Redis holds
--
-- Renews the lease. A reserve that was held back (quarantine.lua) while this instance could not
-- renew comes back to it: the instance settled its journal just before this call, so it knows
-- every ticket of the list it sold. Moves tickets from the pool into the reserve only while the
-- pool holds more than four reserves' worth, so reserves never take the last tickets of a sale.
-- Returns {status, now ms, pool length, moved, taken back, listed, ids...}: status 1, or -2 when
-- the event is not in Redis. listed is 1 when the ids that follow are the whole reserve (possibly
-- none: an empty reserve is news too), sent only when the reserve changed or its length is not
-- what the instance believes, so a plain heartbeat stays small; 0 otherwise.
if redis.call('EXISTS', KEYS[5]) == 0 then
  return {-2, 0, 0, 0, 0, 0}
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
local back = 0
if redis.call('HEXISTS', KEYS[6], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[6], ARGV[1])
  back = redis.call('LLEN', KEYS[2])
  redis.call('INCRBY', KEYS[4], back)
end
local stale = redis.call('EXISTS', KEYS[7]) == 1
if stale then
  -- Rare: tickets of this reserve that a late settlement recorded as sold.
  for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    if redis.call('SREM', KEYS[7], id) == 1 then
      redis.call('LREM', KEYS[2], 1, id)
      redis.call('DECRBY', KEYS[4], 1)
    end
  end
end
local size = tonumber(ARGV[2])
local have = redis.call('LLEN', KEYS[2])
local pool = redis.call('LLEN', KEYS[1])
local moved = 0
local want = size - have
if want > 0 and pool > 4 * size then
  local ids = redis.call('LPOP', KEYS[1], want)
  if ids and stale then
    local fresh = {}
    for _, id in ipairs(ids) do
      if redis.call('SREM', KEYS[7], id) == 0 then
        fresh[#fresh + 1] = id
      end
    end
    ids = #fresh > 0 and fresh
  end
  if ids then
    redis.call('RPUSH', KEYS[2], unpack(ids))
    redis.call('INCRBY', KEYS[4], #ids)
    moved = #ids
  end
  pool = redis.call('LLEN', KEYS[1])
end
local out = {1, now, pool, moved, back, 0}
if moved > 0 or have ~= tonumber(ARGV[4]) then
  out[6] = 1
  for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    out[#out + 1] = id
  end
end
return out
