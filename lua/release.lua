-- Returns one instance's whole reserve of one event to the pool and drops its lease.
--
-- Two callers:
-- * the owner, at a graceful shutdown and when the pool runs low so that the last tickets are
--   sold from Redis. It has settled every fallback sale of that reserve first, so all the
--   reserve holds is unsold: ARGV[2] is how many tickets that is. A list of another length is
--   not the one the owner settled (a copy of this call re-sent late, after a claim changed the
--   list): nothing happens, and the owner's next claim sees the list as it is.
-- * an operator (`ticketd reserves release`), for a held-back reserve whose owner is not coming
--   back, with ARGV[2] = 'held': nothing happens unless the reserve is held back. Sales its
--   owner made while cut off from Redis and never settled are lost to the ledger then, and
--   their tickets can be sold again; if the owner does come back, settle.lua records its sales
--   and reports any ticket sold twice.
--
-- KEYS[1] event:{id}:tickets, KEYS[2] event:{id}:reserve:<instance>, KEYS[3] event:{id}:leases,
-- KEYS[4] event:{id}:reserved, KEYS[5] event:{id}:held, KEYS[6] event:{id}:reserve_gen
-- ARGV[1] instance, ARGV[2] 'held' (operator) or the expected length (owner), ARGV[3] (owner)
-- the generation of the list the owner settled (claim.lua counts it up at every change of the
-- list's contents, so a refill to the same length is not mistaken for the list settled)
-- Returns how many tickets went back, -1 when an operator's reserve is not held back, or -2
-- when the owner's reserve is not of the expected length and generation.
local held = redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1
if ARGV[2] == 'held' then
  if not held then
    return -1
  end
else
  -- An empty list is the same whatever its generation (an instance that never acted on a
  -- claim of the event sends -1), so only a list with tickets is checked for it.
  local n = tonumber(ARGV[2])
  if redis.call('LLEN', KEYS[2]) ~= n
    or (n > 0 and (tonumber(redis.call('HGET', KEYS[6], ARGV[1])) or 0) ~= tonumber(ARGV[3])) then
    return -2
  end
end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
for i = 1, #ids, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ids, i, math.min(i + 999, #ids)))
end
if held then
  redis.call('HDEL', KEYS[5], ARGV[1])
elseif #ids > 0 then
  redis.call('DECRBY', KEYS[4], #ids)
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return #ids
