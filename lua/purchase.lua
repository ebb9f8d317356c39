-- Sells one ticket of one event, atomically.
--
-- KEYS[1] event:{id}:tickets    LIST of unsold ticket ids
-- KEYS[2] event:{id}:sold       HASH ticket id -> "<purchase id> <unix ms>"
-- KEYS[3] event:{id}:purchases  HASH purchase id -> ticket id, or "!" once cancelled
-- KEYS[4] event:{id}:meta       HASH capacity -> N, present once the event is seeded
-- ARGV[1] purchase id, unique per HTTP request
--
-- Returns {status, ticket id or "", tickets left in the pool}:
--   1  sold now
--   2  this purchase id was sold before (a re-sent call): the same ticket again, nothing popped
--   0  sold out
--  -1  this purchase id was cancelled before: nothing sold
--  -2  the event is not in this Redis at all (data lost?): nothing sold, never "sold out"
--
-- The purchase id is checked first, so a call that the client re-sends after a reconnect, or
-- that arrives after the caller gave up and cancelled it, can never take a second ticket.
local done = redis.call('HGET', KEYS[3], ARGV[1])
if done then
  if done == '!' then
    return {-1, '', redis.call('LLEN', KEYS[1])}
  end
  return {2, done, redis.call('LLEN', KEYS[1])}
end
local ticket = redis.call('LPOP', KEYS[1])
if not ticket then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    return {-2, '', 0}
  end
  return {0, '', 0}
end
local now = redis.call('TIME')
redis.call('HSET', KEYS[2], ticket, ARGV[1] .. ' ' .. (now[1] * 1000 + math.floor(now[2] / 1000)))
redis.call('HSET', KEYS[3], ARGV[1], ticket)
return {1, ticket, redis.call('LLEN', KEYS[1])}
