-- Sells tickets of one event to a batch of concurrent purchases, atomically.
--
-- KEYS[1] event:{id}:tickets    LIST of unsold ticket ids (the shared pool)
-- KEYS[2] event:{id}:sold       HASH ticket id -> "<batch id> <unix ms>" (the ledger), followed
--                               by "\n<buyer>\n<Idempotency-Key or nothing>" for a known buyer;
--                               "=" in front once a repeated key was answered with the ticket
-- KEYS[3] event:{id}:batches    HASH batch id -> the ticket ids it sold, space-separated, or "!"
--                               once cancelled
-- KEYS[4] event:{id}:meta       HASH capacity -> N, present once the event is seeded
-- KEYS[5] event:{id}:reserved   STRING: tickets held in instances' live fallback reserves
-- KEYS[6] event:{id}:stale      SET of tickets recorded as sold by a late settlement while they
--                               still sat in the pool (see settle.lua): skipped when popped
-- ARGV[1] batch id, unique per call ("<instance>.<run>:<n>")
-- ARGV[2] purchases in the batch, n >= 1 (anonymous calls on a single Redis may carry several
--         events: see the end of this file)
-- With buyers (ARGV[3] present): see `buyers` below: KEYS[7..10] and
-- ARGV[3..], and a fifth reply element.
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

-- Buyers. Purchases by known buyers (authenticated, or named by a trusted gateway), each maybe
-- with an Idempotency-Key. Anonymous batches never come here and pay nothing for it.
--
-- KEYS[7] event:{id}:buyers     ZSET (scores 0) of "<buyer>\n<ticket>": a buyer's tickets are
--                               one lexicographic range, counted and listed in O(log n)
-- KEYS[8] event:{id}:keys       HASH and KEYS[9] event:{id}:keys:ttl ZSET: the answers as the
--                               layout before time buckets kept them ("<ticket> <remaining>
--                               <batch id>", and their expiry). Read while they exist, never
--                               written but for a replay's "*", swept as before, and given an
--                               expiry of one key lifetime when this version first sees them.
-- KEYS[10] <answers>:widths     ZSET "<width>:<lifetime>" (ms) -> the expiry of the newest answer
--                               bucket of that width, written by instances with that key
--                               lifetime; <answers> is "idempotency" on a single Redis (one
--                               family for all events: the answer binds the key to its event)
--                               and "event:{id}:idempotency" on a cluster (the binding lives in
--                               the buyer's slot, claimed by ticketd before the call)
-- ARGV[3] most tickets per buyer (0: no limit), ARGV[4] key lifetime (ms), ARGV[5] the event id
--          on a single Redis (keys are bound here), else ""
-- ARGV[6..] per purchase, in order: buyer ("" anonymous: no limit, no list; its key is shared by
--          every anonymous client), Idempotency-Key ("" none)
--
-- The answers. <answers>:<width>:<b> is a HASH "<buyer>\n<key>" -> "<event> <ticket> <remaining>
-- <batch id> <written> <install>" of the keys answered (or bound) in bucket b = floor(written /
-- width), at unix ms <written> (Redis clock), while the event's pool was the one its meta names
-- by <install> (event:{id}:meta "install", new at every install and reset; absent: 0). The
-- batch id is "*" once the answer was replayed; ticket and batch are "-" for a key bound to its
-- event without a sale (the pool was empty, the buyer at the limit: a single Redis only). A
-- record counts while written + lifetime > now, the newest of a key's records wins, and one of
-- an earlier install keeps the key bound to the event but answers no ticket, since the reset
-- pool sold none of them. Each bucket hash expires as a whole once its newest record can no
-- longer count, so there is no per-key expiry and no sweep: a key costs one hash field. A
-- writer's width is half its lifetime (at least 1 s); the widths in use are listed with how
-- long their buckets live, so every instance reads every live bucket, whatever lifetime each is
-- configured with, and a changed lifetime simply starts buckets of another width.
--
-- Returns {status, unsold, reserved, tickets, outcomes}: outcomes holds one token per purchase,
-- space-separated: "S" sold now (the next ticket of `tickets`), "-" the pool was empty, "L" the
-- buyer holds the limit already, "K" its key is used by an earlier purchase of this very batch,
-- "U" its key was first used for another event, "R:<ticket>:<remaining>" its key was used
-- before: the same answer again, nothing sold.
-- A ticket whose answer was replayed is never given back by cancel.lua: its buyer was told, and
-- its ledger record then starts with "=", so it no longer names the batch that sold it.
-- Buyer ids hold no control characters (ticketd refuses them), so "\n" separates safely.
-- Every write is one command for the whole batch (one HSET of the ledger, one ZADD of the
-- buyers, one HSET of the answers), and the answers are read with one HMGET per bucket (two or
-- three), so a batch costs a few commands more than an anonymous one, not a few per purchase.

-- answer_buckets(now, life) and record_answers(buckets, answers) come from lua/answers.lua, which
-- ticketd sends in front of this script.

-- Marks a sale as told to its buyer by a repeat: its ledger record stops naming the batch (a
-- leading "="), so that no cancellation of that batch can give the ticket back, whenever it
-- runs and even once the key has expired.
local function told(ticket)
  local sale = redis.call('HGET', KEYS[2], ticket)
  if sale and string.sub(sale, 1, 1) ~= '=' then
    redis.call('HSET', KEYS[2], ticket, '=' .. sale)
  end
end

local function buyers(reserved)
  local prior = redis.call('HGET', KEYS[3], ARGV[1])
  if prior then
    local unsold = redis.call('LLEN', KEYS[1]) + reserved
    if prior == '!' then
      return {-1, unsold, reserved, '', ''}
    end
    return {2, unsold, reserved, prior, redis.call('HGET', KEYS[3], ARGV[1] .. '#') or ''}
  end
  local n = tonumber(ARGV[2])
  local limit = tonumber(ARGV[3])
  local life = tonumber(ARGV[4])
  local bind = ARGV[5]
  local event = string.match(KEYS[1], '{(.*)}')
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local written = string.format('%d', now)
  -- The batch's keys, and what each was answered before: in the newest bucket that holds a
  -- record that counts, else in the layout before buckets.
  local fields, keyed = {}, {}
  for i = 1, n do
    local key = ARGV[5 + 2 * i]
    if key ~= '' then
      fields[#fields + 1] = ARGV[4 + 2 * i] .. '\n' .. key
      keyed[i] = #fields
    end
  end
  local buckets, found, where, legacy, install = nil, {}, {}, {}, '0'
  if #fields > 0 then
    buckets = answer_buckets(now, life)
    install = redis.call('HGET', KEYS[4], 'install') or '0'
    for _, name in ipairs(buckets.names) do
      local got = redis.call('HMGET', name, unpack(fields))
      for j = 1, #fields do
        local rec = got[j]
        if rec then
          local ev, ticket, remaining, batch, at, pool =
            string.match(rec, '^(%S+) (%S+) (%d+) (%S+) (%d+) (%S+)$')
          local ms = tonumber(at)
          if ms and ms + life > now and not (found[j] and tonumber(found[j][5]) >= ms) then
            if ev == event and pool ~= install then
              -- Answered before the event was reset: still bound to it, its ticket void.
              ticket = '-'
            end
            found[j] = {ev, ticket, remaining, batch, at, pool}
            where[j] = name
          end
        end
      end
    end
  end
  if redis.call('EXISTS', KEYS[9]) == 1 then
    -- The layout before buckets, from an upgrade: it goes as a whole one lifetime after this
    -- version first saw it (nothing written before the upgrade lives longer), and its expired
    -- answers go a few at a time meanwhile, as they always did.
    redis.call('PEXPIRE', KEYS[8], life, 'NX')
    redis.call('PEXPIRE', KEYS[9], life, 'NX')
    local old = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now, 'LIMIT', 0, 2 * n + 8)
    if #old > 0 then
      redis.call('HDEL', KEYS[8], unpack(old))
      redis.call('ZREM', KEYS[9], unpack(old))
    end
    if #fields > 0 then
      legacy = redis.call('HMGET', KEYS[8], unpack(fields))
    end
  end
  local outcomes, held, seen, want = {}, {}, {}, 0
  local replayed, legacy_replayed, unbound = {}, {}, {}
  for i = 1, n do
    local buyer = ARGV[4 + 2 * i]
    local out
    local j = keyed[i]
    if j then
      local field = fields[j]
      local rec = found[j]
      if seen[field] then
        out = 'K'
      elseif rec then
        seen[field] = true
        local ev, ticket, remaining, batch, at, pool = unpack(rec)
        if bind ~= '' and ev ~= event then
          out = 'U'
        elseif ticket ~= '-' then
          if batch ~= '*' then
            -- Told now: the sale and the answer are marked.
            local marks = replayed[where[j]] or {}
            replayed[where[j]] = marks
            marks[#marks + 1] = field
            marks[#marks + 1] = ev .. ' ' .. ticket .. ' ' .. remaining .. ' * ' .. at .. ' ' ..
              pool
            told(ticket)
          end
          out = 'R:' .. ticket .. ':' .. remaining
        end
      else
        seen[field] = true
        local old = legacy[j]
        if old then
          local ticket, remaining, batch = string.match(old, '^(%S+) (%d+) (%S+)$')
          if batch ~= '*' then
            legacy_replayed[#legacy_replayed + 1] = field
            legacy_replayed[#legacy_replayed + 1] = ticket .. ' ' .. remaining .. ' *'
            told(ticket)
          end
          out = 'R:' .. ticket .. ':' .. remaining
        elseif bind ~= '' then
          -- First seen here: bound to this event whether it sells or not.
          unbound[i] = true
        end
      end
    end
    if not out and limit > 0 and buyer ~= '' then
      if not held[buyer] then
        held[buyer] = redis.call('ZLEXCOUNT', KEYS[7], '[' .. buyer .. '\n', '(' .. buyer .. '\11')
      end
      if held[buyer] >= limit then
        out = 'L'
      else
        held[buyer] = held[buyer] + 1
      end
    end
    if not out then
      out = 'S'
      want = want + 1
    end
    outcomes[i] = out
  end
  for name, marks in pairs(replayed) do
    redis.call('HSET', name, unpack(marks))
  end
  if #legacy_replayed > 0 then
    redis.call('HSET', KEYS[8], unpack(legacy_replayed))
  end
  local popped = {}
  if want > 0 then
    popped = redis.call('LPOP', KEYS[1], want) or {}
    if #popped > 0 and redis.call('EXISTS', KEYS[6]) == 1 then
      local fresh = {}
      while #popped > 0 do
        for _, ticket in ipairs(popped) do
          if redis.call('SREM', KEYS[6], ticket) == 0 then
            fresh[#fresh + 1] = ticket
          end
        end
        if #fresh == want then
          break
        end
        popped = redis.call('LPOP', KEYS[1], want - #fresh) or {}
      end
      popped = fresh
    end
    if #popped == 0 and redis.call('EXISTS', KEYS[4]) == 0 then
      return {-2, 0, 0, '', ''}
    end
  end
  local m = #popped
  local unsold = redis.call('LLEN', KEYS[1]) + reserved
  local record = ARGV[1] .. ' ' .. now
  local stamp = written .. ' ' .. install
  local ledger, index, answers = {}, {}, {}
  local k = 0
  for i = 1, n do
    if outcomes[i] == 'S' then
      k = k + 1
      local buyer = ARGV[4 + 2 * i]
      if k > m then
        outcomes[i] = '-'
        if limit > 0 and buyer ~= '' then
          held[buyer] = held[buyer] - 1
        end
      else
        local ticket = popped[k]
        local key = ARGV[5 + 2 * i]
        ledger[#ledger + 1] = ticket
        if buyer == '' and key == '' then
          ledger[#ledger + 1] = record
        else
          ledger[#ledger + 1] = record .. '\n' .. buyer .. '\n' .. key
        end
        if buyer ~= '' then
          index[#index + 1] = 0
          index[#index + 1] = buyer .. '\n' .. ticket
        end
        if key ~= '' then
          answers[#answers + 1] = fields[keyed[i]]
          answers[#answers + 1] = event .. ' ' .. ticket .. ' ' .. (unsold + m - k) .. ' ' ..
            ARGV[1] .. ' ' .. stamp
          unbound[i] = nil
        end
      end
    end
  end
  if #ledger > 0 then
    redis.call('HSET', KEYS[2], unpack(ledger))
  end
  if #index > 0 then
    redis.call('ZADD', KEYS[7], unpack(index))
  end
  for i in pairs(unbound) do
    answers[#answers + 1] = fields[keyed[i]]
    answers[#answers + 1] = event .. ' - 0 - ' .. stamp
  end
  if #answers > 0 then
    record_answers(buckets, answers)
  end
  if m < want then
    -- The pool ran out within this batch: a buyer refused for the limit only because of a
    -- purchase that then found no ticket is told the truth, which is that none is left.
    for i = 1, n do
      local buyer = ARGV[4 + 2 * i]
      if outcomes[i] == 'L' and held[buyer] < limit then
        outcomes[i] = '-'
      end
    end
  end
  local tickets = table.concat(popped, ' ')
  local said = table.concat(outcomes, ' ')
  redis.call('HSET', KEYS[3], ARGV[1], tickets, ARGV[1] .. '#', said)
  return {1, unsold, reserved, tickets, said}
end

-- Anonymous purchases of one event: KEYS[base + 1..base + 6] as KEYS[1..6] above, n of them;
-- appends the event's {status, unsold, reserved, tickets} to `out`.
local function anonymous(base, n, record, out)
  local tickets_key, reserved_key, stale = KEYS[base + 1], KEYS[base + 5], KEYS[base + 6]
  local reserved = tonumber(redis.call('GET', reserved_key) or '0')
  local prior = redis.call('HGET', KEYS[base + 3], ARGV[1])
  if prior then
    local unsold = redis.call('LLEN', tickets_key) + reserved
    if prior == '!' then
      prior = ''
      out[#out + 1] = -1
    else
      out[#out + 1] = 2
    end
    out[#out + 1] = unsold
    out[#out + 1] = reserved
    out[#out + 1] = prior
    return
  end
  local popped = redis.call('LPOP', tickets_key, n)
  if popped and redis.call('EXISTS', stale) == 1 then
    -- Rare: an operator released a held-back reserve and its owner then settled sales from it.
    local fresh = {}
    while popped do
      for _, ticket in ipairs(popped) do
        if redis.call('SREM', stale, ticket) == 0 then
          fresh[#fresh + 1] = ticket
        end
      end
      if #fresh == n then
        break
      end
      popped = redis.call('LPOP', tickets_key, n - #fresh)
    end
    popped = #fresh > 0 and fresh
  end
  if not popped then
    local missing = redis.call('EXISTS', KEYS[base + 4]) == 0
    out[#out + 1] = missing and -2 or 1
    out[#out + 1] = missing and 0 or reserved
    out[#out + 1] = missing and 0 or reserved
    out[#out + 1] = ''
    return
  end
  local ledger = {}
  for k, ticket in ipairs(popped) do
    ledger[2 * k - 1] = ticket
    ledger[2 * k] = record
  end
  redis.call('HSET', KEYS[base + 2], unpack(ledger))
  local tickets = table.concat(popped, ' ')
  redis.call('HSET', KEYS[base + 3], ARGV[1], tickets)
  out[#out + 1] = 1
  out[#out + 1] = redis.call('LLEN', tickets_key) + reserved
  out[#out + 1] = reserved
  out[#out + 1] = tickets
end

if #ARGV > 2 then
  return buyers(tonumber(redis.call('GET', KEYS[5]) or '0'))
end
-- Anonymous purchases of one event or, on a single Redis, of several: ARGV[2] is then the
-- count of each event's purchases, space-separated, and KEYS holds six keys per event in the
-- same order. Each event's part is what a call for that event alone would do, under the one
-- batch id (recorded in each event's batches hash), and the reply holds its four values in
-- turn. A round of purchases spread over many events is then one script call, not one each.
local now = redis.call('TIME')
local record = ARGV[1] .. ' ' .. (now[1] * 1000 + math.floor(now[2] / 1000))
local out = {}
local e = 0
for n in string.gmatch(ARGV[2], '%d+') do
  anonymous(6 * e, tonumber(n), record, out)
  e = e + 1
end
return out
