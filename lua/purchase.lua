-- Sells tickets of one event to a batch of concurrent purchases, atomically.
--
-- KEYS[1] event:{id}:tickets    LIST of unsold ticket ids (the shared pool)
-- KEYS[2] event:{id}:sold       HASH ticket id -> "<batch id> <unix ms>" (the ledger)
-- KEYS[3] event:{id}:batches    HASH batch id -> the ticket ids it sold, space-separated, or "!"
--                               once cancelled
-- KEYS[4] event:{id}:meta       HASH capacity -> N, present once the event is seeded
-- KEYS[5] event:{id}:reserved   STRING: tickets held in instances' live fallback reserves
-- KEYS[6] event:{id}:stale      SET of tickets recorded as sold by a late settlement while they
--                               still sat in the pool (see settle.lua): skipped when popped
-- ARGV[1] batch id, unique per call ("<instance>.<run>:<n>")
-- ARGV[2] purchases in the batch, n >= 1
--
-- Returns {status, unsold, reserved, tickets}:
--   status  1  sold now. `tickets` holds the m <= n ticket ids popped, space-separated: the
--              first m purchases of the batch get them in that order, the other n - m found the
--              pool empty (with `reserved` tickets still held in reserves; 0: sold out)
--           2  this batch ran before (a re-sent call): the same tickets again, nothing popped
--          -1  this batch was cancelled before: nothing sold
--          -2  the event is not in this Redis at all (data lost?): nothing sold, never "sold out"
--   unsold     pool + reserves after the call; purchase k of m was answered unsold + (m - k),
--              what selling the batch one purchase at a time would have answered
--   reserved   tickets held in instances' reserves
--
-- The batch id is checked first, so a call that the client re-sends after a reconnect, or that
-- arrives after the caller gave up and cancelled it, can never sell a second time. The work is
-- the same few commands whatever n is: one LPOP with a count, one HSET into the ledger, one HSET
-- of the batch record, and O(1) reads (the stale set is checked with one EXISTS).
local reserved = tonumber(redis.call('GET', KEYS[5]) or '0')
local prior = redis.call('HGET', KEYS[3], ARGV[1])
if prior then
  local unsold = redis.call('LLEN', KEYS[1]) + reserved
  if prior == '!' then
    return {-1, unsold, reserved, ''}
  end
  return {2, unsold, reserved, prior}
end
local n = tonumber(ARGV[2])
local popped = redis.call('LPOP', KEYS[1], n)
if popped and redis.call('EXISTS', KEYS[6]) == 1 then
  -- Rare: an operator released a held-back reserve and its owner then settled sales from it.
  local fresh = {}
  while popped do
    for _, ticket in ipairs(popped) do
      if redis.call('SREM', KEYS[6], ticket) == 0 then
        fresh[#fresh + 1] = ticket
      end
    end
    if #fresh == n then
      break
    end
    popped = redis.call('LPOP', KEYS[1], n - #fresh)
  end
  popped = #fresh > 0 and fresh
end
if not popped then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    return {-2, 0, 0, ''}
  end
  return {1, reserved, reserved, ''}
end
local now = redis.call('TIME')
local record = ARGV[1] .. ' ' .. (now[1] * 1000 + math.floor(now[2] / 1000))
local ledger = {}
for k, ticket in ipairs(popped) do
  ledger[2 * k - 1] = ticket
  ledger[2 * k] = record
end
redis.call('HSET', KEYS[2], unpack(ledger))
local tickets = table.concat(popped, ' ')
redis.call('HSET', KEYS[3], ARGV[1], tickets)
return {1, redis.call('LLEN', KEYS[1]) + reserved, reserved, tickets}
