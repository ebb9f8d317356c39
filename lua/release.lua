-- Returns one instance's whole reserve of one event to the pool and drops its lease.
--
-- Two callers:
-- * the owner, at a graceful shutdown and when the pool runs low so that the last tickets are
--   sold from Redis. It has settled every fallback sale of that reserve first, so all the
--   reserve holds is unsold. No ARGV[2].
-- * a reaper, for an instance whose lease expired (a crashed instance), with ARGV[2] = the
--   lease expiry it observed. Then the reserve is returned only if the lease is still exactly
--   that one (no heartbeat since) and has expired by Redis's own clock.
--
-- KEYS[1] event:{id}:tickets, KEYS[2] event:{id}:reserve:<instance>, KEYS[3] event:{id}:leases,
-- KEYS[4] event:{id}:reserved
-- ARGV[1] instance, ARGV[2] (reaper only) observed lease expiry, unix ms
-- Returns how many tickets went back, or -1 when a reaper found the lease renewed or unexpired.
if ARGV[2] then
  local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then
    return -1
  end
  local t = redis.call('TIME')
  if tonumber(score) > t[1] * 1000 + math.floor(t[2] / 1000) then
    return -1
  end
end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
for i = 1, #ids, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ids, i, math.min(i + 999, #ids)))
end
if #ids > 0 then
  redis.call('DECRBY', KEYS[4], #ids)
  redis.call('DEL', KEYS[2])
end
redis.call('ZREM', KEYS[3], ARGV[1])
return #ids
