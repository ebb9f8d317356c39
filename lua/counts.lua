-- The counts behind /metrics for many events in one call, read only (a single Redis, where a
-- script may take keys of any slot; a cluster's shards read them with a pipeline).
--
-- For each event i, three keys:
-- KEYS[3i-2] event:{id}:tickets    the shared pool
-- KEYS[3i-1] event:{id}:reserved   STRING: tickets held in all live reserves
-- KEYS[3i]   event:{id}:held       HASH instance -> tickets of its held-back reserve
--
-- Returns {unsold 1, held back 1, unsold 2, held back 2, ...}: unsold is the pool plus every
-- live reserve, held back the sum of the held-back reserves.
-- A count that is not a number (a damaged key) reads as 0, as a read of it alone would.
local out = {}
for i = 1, #KEYS, 3 do
  local reserved = math.max(0, tonumber(redis.call('GET', KEYS[i + 1])) or 0)
  local unsold = redis.call('LLEN', KEYS[i]) + reserved
  local held = 0
  for _, n in ipairs(redis.call('HVALS', KEYS[i + 2])) do
    held = held + math.max(0, tonumber(n) or 0)
  end
  out[#out + 1] = unsold
  out[#out + 1] = held
end
return out
