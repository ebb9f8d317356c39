-- Writes fallback sales of one instance into the ledger, idempotently.
--
-- KEYS[1] event:{id}:tickets, KEYS[2] event:{id}:reserve:<instance>, KEYS[3] event:{id}:reserved,
-- KEYS[4] event:{id}:sold
-- ARGV: triples (ticket id, purchase id, unix ms) of the sales
--
-- A sold ticket normally still sits in the instance's reserve: it leaves the reserve and enters
-- the ledger. Already in the ledger under the same purchase: nothing to do (a retried
-- settlement). Back in the pool (the reserve was reaped during a partition longer than the
-- lease): taken out of the pool and recorded. Sold to another purchase: a conflict, reported.
-- Returns {settled, already, from pool, conflicting ticket ids...}.
local settled, already, from_pool = 0, 0, 0
local conflicts = {}
for i = 1, #ARGV, 3 do
  local ticket, purchase, ms = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local record = purchase .. ' ' .. ms .. ' fallback'
  if redis.call('LREM', KEYS[2], 1, ticket) == 1 then
    redis.call('DECRBY', KEYS[3], 1)
    redis.call('HSET', KEYS[4], ticket, record)
    settled = settled + 1
  else
    local existing = redis.call('HGET', KEYS[4], ticket)
    if existing and string.sub(existing, 1, #purchase + 1) == purchase .. ' ' then
      already = already + 1
    elseif (not existing) and redis.call('LREM', KEYS[1], 1, ticket) == 1 then
      redis.call('HSET', KEYS[4], ticket, record)
      from_pool = from_pool + 1
    else
      conflicts[#conflicts + 1] = ticket
    end
  end
end
local out = {settled, already, from_pool}
for _, c in ipairs(conflicts) do
  out[#out + 1] = c
end
return out
