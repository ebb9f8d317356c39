-- Installs a freshly built ticket pool for one event, unless the event exists already.
--
-- KEYS[1] event:{id}:seed:<nonce>  LIST built by the seeder (absent when the capacity is 0)
-- KEYS[2] event:{id}:tickets, KEYS[3] event:{id}:sold, KEYS[4] event:{id}:purchases
-- KEYS[5] event:{id}:meta          HASH capacity -> N
-- ARGV[1] capacity, ARGV[2] "reset" to replace an existing event's pool and ledger
--
-- Returns {1, capacity} when installed, {0, existing capacity} when the event was left alone.
-- Two seeders racing on one event cannot both install: the meta key decides, atomically.
local existing = redis.call('HGET', KEYS[5], 'capacity')
if existing and ARGV[2] ~= 'reset' then
  redis.call('DEL', KEYS[1])
  return {0, tonumber(existing)}
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PERSIST', KEYS[2])
end
redis.call('HSET', KEYS[5], 'capacity', ARGV[1])
return {1, tonumber(ARGV[1])}
