-- Returns the reserve of an instance whose lease expired (a crashed instance) to the pool.
--
-- KEYS[1] event:{id}:tickets, KEYS[2] event:{id}:reserve:<victim>, KEYS[3] event:{id}:leases,
-- KEYS[4] event:{id}:reserved
-- ARGV[1] victim instance, ARGV[2] the lease expiry the reaper observed
--
-- Reaps only if the lease is still exactly the one observed (no heartbeat since) and has
-- expired by Redis's clock. Returns the tickets returned, or -1 when it did nothing.
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then
  return -1
end
local t = redis.call('TIME')
if tonumber(score) > t[1] * 1000 + math.floor(t[2] / 1000) then
  return -1
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
