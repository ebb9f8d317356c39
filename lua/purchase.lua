-- Sells one ticket to each purchase of a batch of concurrent purchases of one event, atomically.
--
-- KEYS[1] event:{id}:tickets    LIST of unsold ticket ids (the shared pool)
-- KEYS[2] event:{id}:sold       HASH ticket id -> "<purchase id> <unix ms>"
-- KEYS[3] event:{id}:purchases  HASH purchase id -> ticket id, or "!" once cancelled
-- KEYS[4] event:{id}:meta       HASH capacity -> N, present once the event is seeded
-- KEYS[5] event:{id}:reserved   STRING: tickets held in instances' fallback reserves
-- ARGV[1..n] purchase ids, one per HTTP request, all distinct (n >= 1)
--
-- Returns n triples {status, ticket id or "", count}, flat and in ARGV order:
--   1  sold now; count: unsold tickets (pool + reserves) after this sale, as if the batch had
--      been sold one purchase after the other in ARGV order
--   2  this purchase id was sold before (a re-sent call): the same ticket again, nothing popped
--   0  the pool is empty; count: tickets reserves still hold (0: sold out)
--  -1  this purchase id was cancelled before: nothing sold
--  -2  the event is not in this Redis at all (data lost?): nothing sold, never "sold out"
--
-- Every purchase id is checked first, so a call that the client re-sends after a reconnect, or
-- that arrives after the caller gave up and cancelled it, can never take a second ticket. One
-- call does the work of n: one HMGET, one LPOP with a count and two multi-field HSETs, whatever
-- n is (the batch is formed by the client from the purchases waiting at the same moment).
local n = #ARGV
local reserved = tonumber(redis.call('GET', KEYS[5]) or '0')
local done = redis.call('HMGET', KEYS[3], unpack(ARGV))
local fresh = 0
for i = 1, n do
  if not done[i] then
    fresh = fresh + 1
  end
end
local popped = {}
if fresh > 0 then
  popped = redis.call('LPOP', KEYS[1], fresh) or {}
end
local m = #popped
local missing = m == 0 and fresh > 0 and redis.call('EXISTS', KEYS[4]) == 0
local unsold = redis.call('LLEN', KEYS[1]) + reserved
local stamp = ''
if m > 0 then
  local now = redis.call('TIME')
  stamp = ' ' .. (now[1] * 1000 + math.floor(now[2] / 1000))
end
local out, sold, index = {}, {}, {}
local k = 0
for i = 1, n do
  local d = done[i]
  local j = 3 * i
  if d then
    out[j - 2], out[j - 1], out[j] = (d == '!') and -1 or 2, (d == '!') and '' or d, unsold
  elseif k < m then
    k = k + 1
    local ticket = popped[k]
    sold[2 * k - 1], sold[2 * k] = ticket, ARGV[i] .. stamp
    index[2 * k - 1], index[2 * k] = ARGV[i], ticket
    out[j - 2], out[j - 1], out[j] = 1, ticket, unsold + (m - k)
  elseif missing then
    out[j - 2], out[j - 1], out[j] = -2, '', 0
  else
    out[j - 2], out[j - 1], out[j] = 0, '', reserved
  end
end
if m > 0 then
  redis.call('HSET', KEYS[2], unpack(sold))
  redis.call('HSET', KEYS[3], unpack(index))
end
return out
