-- Returns one instance's whole reserve of one event to the pool and drops its lease: at a
-- graceful shutdown, and when the pool runs low so that the last tickets are sold from Redis.
-- The caller has settled every fallback sale of that reserve first, so all it holds is unsold.
--
-- KEYS[1] event:{id}:tickets, KEYS[2] event:{id}:reserve:<instance>, KEYS[3] event:{id}:leases,
-- KEYS[4] event:{id}:reserved
-- ARGV[1] instance
-- Returns how many tickets went back.
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
