-- Makes one purchase void whose outcome the caller never learned (timeout, lost connection):
-- the buyer was told 503, so the ticket, if the purchase took one, goes back to the pool.
--
-- KEYS[1] event:{id}:tickets, KEYS[2] event:{id}:sold, KEYS[3] event:{id}:purchases
-- (KEYS[4] and KEYS[5] are passed as for purchase.lua and not used)
-- ARGV[1] purchase id
--
-- Marks the purchase id "!" in every case, so that a copy of the purchase call still in flight
-- can no longer sell (purchase.lua checks the id first). Returns 1 when a ticket was put back.
local ticket = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], '!')
if (not ticket) or ticket == '!' then
  return 0
end
redis.call('HDEL', KEYS[2], ticket)
redis.call('LPUSH', KEYS[1], ticket)
return 1
