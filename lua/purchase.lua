-- Sells one ticket of one event, atomically.
--
-- KEYS[1] event:{id}:tickets    LIST of unsold ticket ids (the shared pool)
-- KEYS[2] event:{id}:sold       HASH ticket id -> "<purchase id> <unix ms>"
-- KEYS[3] event:{id}:purchases  HASH purchase id -> ticket id, or "!" once cancelled
-- KEYS[4] event:{id}:meta       HASH capacity -> N, present once the event is seeded
-- KEYS[5] event:{id}:reserved   STRING: tickets held in instances' fallback reserves
-- ARGV[1] purchase id, unique per HTTP request
--
-- Returns {status, ticket id or "", unsold tickets (pool + reserves)}:
--   1  sold now
--   2  this purchase id was sold before (a re-sent call): the same ticket again, nothing popped
--   0  the pool is empty; the count says how many tickets reserves still hold (0: sold out)
--  -1  this purchase id was cancelled before: nothing sold
--  -2  the event is not in this Redis at all (data lost?): nothing sold, never "sold out"
--
-- The purchase id is checked first, so a call that the client re-sends after a reconnect, or
-- that arrives after the caller gave up and cancelled it, can never take a second ticket.
local reserved = tonumber(redis.call('GET', KEYS[5]) or '0')
local done = redis.call('HGET', KEYS[3], ARGV[1])
if done then
  if done == '!' then
    return {-1, '', redis.call('LLEN', KEYS[1]) + reserved}
  end
  return {2, done, redis.call('LLEN', KEYS[1]) + reserved}
end
local ticket = redis.call('LPOP', KEYS[1])
if not ticket then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    return {-2, '', 0}
  end
  return {0, '', reserved}
end
local now = redis.call('TIME')
redis.call('HSET', KEYS[2], ticket, ARGV[1] .. ' ' .. (now[1] * 1000 + math.floor(now[2] / 1000)))
redis.call('HSET', KEYS[3], ARGV[1], ticket)
return {1, ticket, redis.call('LLEN', KEYS[1]) + reserved}
