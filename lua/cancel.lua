-- Gives back what a purchase batch sold to nobody.
--
-- KEYS[1] event:{id}:tickets, KEYS[2] event:{id}:sold, KEYS[3] event:{id}:batches
-- (KEYS[4] to KEYS[6] are passed as for purchase.lua and not used)
-- KEYS[7] event:{id}:buyers, KEYS[8] event:{id}:keys, KEYS[9] event:{id}:keys:ttl (the answers
-- before time buckets), KEYS[10] <answers>:widths (the answers' buckets: see purchase.lua)
-- ARGV[1] batch id
-- ARGV[2..] ticket ids whose buyers left before the answer arrived; none when the caller never
--           learned the batch's outcome (timeout, lost connection, unreadable reply)
--
-- Without tickets, the batch is made void: marked "!" in every case, so that a copy of the call
-- still in flight can no longer sell (purchase.lua checks the batch id first), and every ticket
-- it sold goes back. A ticket goes back to the pool only while the ledger still names this
-- batch, so a ticket already given back and sold again is left alone, and running this twice
-- changes nothing. A ticket sold to a known buyer also leaves that buyer's tickets, and its
-- Idempotency-Key is forgotten (a retry buys afresh). A ticket a retry with that key was already
-- answered with has a ledger record starting with "=" (purchase.lua): it names no batch any
-- more, so it stays sold, whenever this runs (even after the key expired).
-- Returns how many tickets were put back.
local tickets = {}
if #ARGV > 1 then
  for i = 2, #ARGV do
    tickets[#tickets + 1] = ARGV[i]
  end
else
  local prior = redis.call('HGET', KEYS[3], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], '!')
  if prior and prior ~= '!' then
    for ticket in string.gmatch(prior, '%S+') do
      tickets[#tickets + 1] = ticket
    end
  end
end
local prefix = ARGV[1] .. ' '
local back = 0
for _, ticket in ipairs(tickets) do
  local record = redis.call('HGET', KEYS[2], ticket)
  if record and string.sub(record, 1, #prefix) == prefix then
    -- A known buyer's sale leaves the buyer's tickets, and its key is forgotten, so a retry
    -- buys afresh. (Once a retry was answered with the ticket, the record starts with "=" and
    -- no longer matches: the ticket stays sold, its buyer was told.)
    local buyer, key = string.match(record, '^[^\n]*\n([^\n]*)\n(.*)$')
    if buyer then
      if key ~= '' then
        -- The sale's answer is in a bucket of the sale's time (the ledger record's), of the
        -- width its instance wrote; it stays as the key's binding to the event, without the
        -- ticket.
        local field = buyer .. '\n' .. key
        local at = tonumber(string.match(record, '^%S+ (%d+)'))
        local prefix = string.sub(KEYS[10], 1, -7)
        for _, member in ipairs(at and redis.call('ZRANGE', KEYS[10], 0, -1) or {}) do
          local width = tonumber(string.match(member, '^(%d+):'))
          local name = prefix .. width .. ':' .. math.floor(at / width)
          local rec = redis.call('HGET', name, field)
          local ev, sold, _, _, stamp =
            string.match(rec or '', '^(%S+) (%S+) (%d+) (%S+) (%d+ %S+)$')
          if sold == ticket then
            redis.call('HSET', name, field, ev .. ' - 0 - ' .. stamp)
          end
        end
        local rec = redis.call('HGET', KEYS[8], field)
        if rec and string.sub(rec, 1, #ticket + 1) == ticket .. ' ' then
          redis.call('HDEL', KEYS[8], field)
          redis.call('ZREM', KEYS[9], field)
        end
      end
      if buyer ~= '' then
        redis.call('ZREM', KEYS[7], buyer .. '\n' .. ticket)
      end
    end
    redis.call('HDEL', KEYS[2], ticket)
    redis.call('LPUSH', KEYS[1], ticket)
    back = back + 1
  end
end
return back
