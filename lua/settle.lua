-- Writes fallback sales of one instance into the ledger, idempotently, at O(1) per sale
-- whatever the size of the pool.
--
-- KEYS[1] event:{id}:reserve:<instance>, KEYS[2] event:{id}:reserved, KEYS[3] event:{id}:sold,
-- KEYS[4] event:{id}:held, KEYS[5] event:{id}:stale, KEYS[6] event:{id}:buyers,
-- KEYS[7] event:{id}:keys, KEYS[8] event:{id}:keys:ttl (the answers before time buckets),
-- KEYS[9] event:{id}:fallback_buyers (HASH "<instance>\n<buyer>" -> tickets that instance's
-- reserves sold the buyer, over all its runs: a restarted instance starts its count from it),
-- KEYS[10] <answers>:widths (the answers' time buckets: see purchase.lua and answers.lua),
-- KEYS[11] event:{id}:meta (its "install")
-- ARGV[1] instance, ARGV[2] most tickets per buyer (0: no limit), ARGV[3] key lifetime (ms);
-- then six per sale: ticket id, purchase id, unix ms, buyer ("" anonymous), Idempotency-Key
-- ("" none), the remaining count its buyer was told
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
-- A known buyer's sale joins the buyer's tickets, and its key is recorded as answered (a retry
-- gets the same ticket); a key that already names another ticket was used for two sales (on two
-- instances while Redis was down, or on Redis and then from a reserve) and is reported, and the
-- key then answers the fallback's ticket unless a repeat already confirmed the other one. The
-- buyers holding more than the limit after this settlement are reported too: instances enforce
-- it only from what each knows while Redis is down.
-- Returns {settled, already, late, {conflicting ticket ids}, {"<buyer>\n<held>" over the
-- limit}, {"<buyer>\n<key>" used for two sales}}.
local held = redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1
local settled, already, late = 0, 0, 0
local conflicts, over, twice, seen = {}, {}, {}, {}
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local life = tonumber(ARGV[3])
local event = string.match(KEYS[3], '{(.*)}')

-- answer_buckets(now, life) and record_answers(buckets, answers) come from lua/answers.lua, which
-- ticketd sends in front of this script.
local buckets, install
for i = 8, #ARGV, 6 do
  if ARGV[i] ~= '' then
    buckets = answer_buckets(now, life)
    install = redis.call('HGET', KEYS[11], 'install') or '0'
    break
  end
end
for i = 4, #ARGV, 6 do
  local ticket, purchase, ms = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local buyer, key, remaining = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
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
    local record = purchase .. ' ' .. ms .. ' fallback'
    if buyer ~= '' or key ~= '' then
      record = record .. '\n' .. buyer .. '\n' .. key
    end
    if buyer ~= '' then
      redis.call('ZADD', KEYS[6], 0, buyer .. '\n' .. ticket)
      redis.call('HINCRBY', KEYS[9], ARGV[1] .. '\n' .. buyer, 1)
    end
    if buyer ~= '' or key ~= '' then
      if key ~= '' then
        local field = buyer .. '\n' .. key
        -- What the key answers now: the newest record that counts (one of an earlier install
        -- of the event answers no ticket), else the layout before buckets.
        local ev, sold, batch, newest
        for _, name in ipairs(buckets.names) do
          local rec = redis.call('HGET', name, field)
          local e, tk, _, b, at, pool =
            string.match(rec or '', '^(%S+) (%S+) (%d+) (%S+) (%d+) (%S+)$')
          local ms = tonumber(at)
          if ms and ms + life > now and not (newest and newest >= ms) then
            ev, sold, batch, newest = e, tk, b, ms
            if ev == event and pool ~= install then
              sold, batch = '-', '-'
            end
          end
        end
        if not sold or sold == '-' then
          local rec = redis.call('HGET', KEYS[7], field)
          if rec then
            ev, sold, batch = event, string.match(rec, '^(%S+) %d+ (%S+)$')
          end
        end
        local mine = sold == ticket
        if sold and sold ~= '-' and not mine then
          twice[#twice + 1] = field
        end
        -- The fallback's answer was told (journaled before it was sent). It replaces an answer
        -- not yet confirmed by a repeat (a batch that may still be made void), so the key keeps
        -- answering a ticket its buyer holds; a confirmed one ("*") of this event stays. On a
        -- single Redis it also replaces another event's record, whose buyer then gets 422 on a
        -- retry there: the key went to two events, and a lost answer here would sell again.
        if not mine and not (batch == '*' and ev == event) then
          record_answers(buckets, {field, event .. ' ' .. ticket .. ' ' .. remaining .. ' * ' ..
            string.format('%d', now) .. ' ' .. install})
        end
      end
      if limit > 0 and buyer ~= '' and not seen[buyer] then
        seen[buyer] = true
        seen[#seen + 1] = buyer
      end
    end
    redis.call('HSET', KEYS[3], ticket, record)
    if in_reserve then
      settled = settled + 1
    else
      redis.call('SADD', KEYS[5], ticket)
      late = late + 1
    end
  end
end
for _, buyer in ipairs(seen) do
  local count = redis.call('ZLEXCOUNT', KEYS[6], '[' .. buyer .. '\n', '(' .. buyer .. '\11')
  if count > limit then
    over[#over + 1] = buyer .. '\n' .. count
  end
end
return {settled, already, late, conflicts, over, twice}
