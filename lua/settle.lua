-- Writes fallback sales of one instance into the ledger, idempotently, at O(1) per sale
-- whatever the size of the pool.
--
-- KEYS[1] event:{id}:reserve:<instance>, KEYS[2] event:{id}:reserved, KEYS[3] event:{id}:sold,
-- KEYS[4] event:{id}:held, KEYS[5] event:{id}:stale
-- ARGV[1] instance; then triples (ticket id, purchase id, unix ms) of the sales
--
-- A sold ticket normally still sits in the instance's reserve: it leaves the reserve (and the
-- count of live or held-back reserved tickets) and enters the ledger. Already in the ledger
-- under the same purchase: nothing to do (a retried settlement). Not in the reserve and not in
-- the ledger: an operator released the held-back reserve, so the ticket is back in the pool (or
-- in another reserve); it is recorded as sold and marked stale, so that whoever pops it next
-- skips it (purchase.lua, claim.lua) instead of scanning the pool for it here. In the ledger
-- under another purchase: a conflict, reported (possible only after such a release).
-- Sales are taken from the reserve in the order they were listed, so LREM finds each at the
-- head of the list.
-- Returns {settled, already, late, conflicting ticket ids...}.
local held = redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1
local settled, already, late = 0, 0, 0
local conflicts = {}
for i = 2, #ARGV, 3 do
  local ticket, purchase, ms = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local in_reserve = redis.call('LREM', KEYS[1], 1, ticket) == 1
  if in_reserve then
    -- Out of every list now: a stale mark (a late sale of it settled by another instance)
    -- has nothing left to skip.
    redis.call('SREM', KEYS[5], ticket)
    if held then
      redis.call('HINCRBY', KEYS[4], ARGV[1], -1)
    else
      redis.call('DECRBY', KEYS[2], 1)
    end
  end
  local existing = redis.call('HGET', KEYS[3], ticket)
  if existing and string.sub(existing, 1, #purchase + 1) == purchase .. ' ' then
    already = already + 1
  elseif existing then
    conflicts[#conflicts + 1] = ticket
  else
    redis.call('HSET', KEYS[3], ticket, purchase .. ' ' .. ms .. ' fallback')
    if in_reserve then
      settled = settled + 1
    else
      redis.call('SADD', KEYS[5], ticket)
      late = late + 1
    end
  end
end
local out = {settled, already, late}
for _, c in ipairs(conflicts) do
  out[#out + 1] = c
end
return out
