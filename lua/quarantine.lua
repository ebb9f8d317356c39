-- Holds back the reserve of an instance whose lease expired (crashed, stalled or cut off).
--
-- KEYS[1] event:{id}:leases, KEYS[2] event:{id}:reserve:<instance>, KEYS[3] event:{id}:reserved,
-- KEYS[4] event:{id}:held
-- ARGV[1] instance, ARGV[2] the lease expiry the caller watched stay unrenewed (unix ms)
--
-- The owner may have sold tickets of its reserve while it could not reach Redis, and only its
-- journal knows which. So the reserve is never returned to the pool here: it stays where it is,
-- its lease is dropped and its count moves from `reserved` (live reserves, which buyers are told
-- to wait for) to `held` (held back, visible, not for sale). The owner takes it back at its next
-- heartbeat (claim.lua) after settling its journal; an operator can release it on purpose
-- (release.lua with 'held').
-- Acts only if the lease is still exactly the one observed and has expired by Redis's clock.
-- Returns how many tickets were held back, or -1 when the lease was renewed or has not expired.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then
  return -1
end
local t = redis.call('TIME')
if tonumber(score) > t[1] * 1000 + math.floor(t[2] / 1000) then
  return -1
end
redis.call('ZREM', KEYS[1], ARGV[1])
local n = redis.call('LLEN', KEYS[2])
if n > 0 then
  redis.call('DECRBY', KEYS[3], n)
  redis.call('HSET', KEYS[4], ARGV[1], n)
end
return n
