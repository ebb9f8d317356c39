-- Installs a freshly built ticket pool for one event, unless the event exists already.
--
-- KEYS[1] event:{id}:seed:<nonce>  LIST built by the seeder (absent when the capacity is 0)
-- KEYS[2] event:{id}:tickets, KEYS[3] event:{id}:sold, KEYS[4] event:{id}:batches
-- KEYS[5] event:{id}:meta          HASH capacity -> N
-- KEYS[6] event:{id}:leases, KEYS[7] event:{id}:reserved, KEYS[8] event:{id}:held,
-- KEYS[9] event:{id}:stale, KEYS[10] event:{id}:buyers, KEYS[11] event:{id}:keys,
-- KEYS[12] event:{id}:keys:ttl, KEYS[13] event:{id}:fallback_buyers
-- ARGV[1] capacity, ARGV[2] "reset" to replace an existing event's pool and ledger, ARGV[3] id
--
-- A reset also drops every instance's fallback reserve of the event, live or held back (the
-- reserve keys are named from the lease set and the held-back hash; they share the event's
-- hash tag, so the script stays in one slot). It keeps event:{id}:reserve_gen on purpose: the
-- reseeded event has the same ticket ids, and a reserve list must never come back under a
-- generation an instance already knows (see claim.lua). Stop
-- the instances selling the event before a reset: an instance selling from memory while Redis
-- is unreachable would not learn of it.
--
-- An install names the new pool in event:{id}:meta "install" ("<installs>.<sec>.<usec>": a count
-- kept across resets, and Redis's clock, so that an event whose keys were deleted and seeded
-- again gets a new name too): the Idempotency-Key answers live in time buckets outside these
-- keys (purchase.lua), and those written under another name no longer answer a ticket, as the
-- new pool sold none of them.
--
-- Returns {1, capacity} when installed, {0, existing capacity} when the event was left alone.
-- Two seeders racing on one event cannot both install: the meta key decides, atomically.
local existing = redis.call('HGET', KEYS[5], 'capacity')
if existing and ARGV[2] ~= 'reset' then
  redis.call('DEL', KEYS[1])
  return {0, tonumber(existing)}
end
for _, instance in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
  redis.call('DEL', 'event:{' .. ARGV[3] .. '}:reserve:' .. instance)
end
for _, instance in ipairs(redis.call('HKEYS', KEYS[8])) do
  redis.call('DEL', 'event:{' .. ARGV[3] .. '}:reserve:' .. instance)
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
  KEYS[11], KEYS[12], KEYS[13])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PERSIST', KEYS[2])
end
local installs = redis.call('HINCRBY', KEYS[5], 'installs', 1)
local now = redis.call('TIME')
redis.call('HSET', KEYS[5], 'capacity', ARGV[1], 'install', installs .. '.' .. now[1] .. '.' .. now[2])
return {1, tonumber(ARGV[1])}
