//! The Lua scripts the Redis engine runs: each is one atomic step on the server, sent as `EVALSHA` and loaded
//! again on `NOSCRIPT` (what [`redis::Script`] does). Every script takes the key prefix (`{herald}`) as its first
//! argument; the key layout is in the parent module's docs.

use std::sync::LazyLock;

use redis::Script;

/// Shared helpers, prepended to every script.
const COMMON: &str = r#"
local P = ARGV[1]
-- The server's clock in milliseconds: one clock for every node.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A history entry id is "<offset>-<seq>".
local function split_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
-- Field value of a stream entry's flat field list.
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
-- After history lost its oldest entries up to entry `id`: the channel's first offset and trimmed sequence.
local function trimmed_through(mk, id)
  local off, seq = split_id(id)
  redis.call('HSET', mk, 'first', off + 1)
  local tseq = tonumber(redis.call('HGET', mk, 'tseq') or '0')
  if seq > tseq then redis.call('HSET', mk, 'tseq', seq) end
end
-- Files the channel under the time its oldest retained event expires (what the age sweep reads).
local function index_expiry(ch, hk, age)
  local first = redis.call('XRANGE', hk, '-', '+', 'COUNT', 1)
  if #first == 0 then
    redis.call('ZREM', P .. ':expiry', ch)
  else
    redis.call('ZADD', P .. ':expiry', tonumber(field(first[1][2], 't')) + age, ch)
  end
end
"#;

/// Publishes a batch. `ARGV`: prefix, candidate epoch, event count, then per event ten values: channel, name, data,
/// id, whether the id is the publisher's (`1`/`0`), state op (`0` none, `1` set, `2` remove), state key, state
/// value, max events, max age (ms). Returns per event `{offset, epoch, duplicate, seq, time, channel id}`.
const PUBLISH: &str = r#"
local candidate = ARGV[2]
local n = tonumber(ARGV[3])
local now = now_ms()
local last_time = tonumber(redis.call('GET', P .. ':time') or '0')
if now < last_time then now = last_time end
local out = {}
local touched = {}
local a = 4
for _ = 1, n do
  local ch, name, data, id = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local own_id, op, skey, sval = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local max_events, max_age = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9])
  a = a + 10
  local mk, hk = P .. ':m:' .. ch, P .. ':h:' .. ch
  local meta = redis.call('HMGET', mk, 'id', 'epoch')
  local chid, epoch = meta[1], meta[2]
  if not chid then
    -- A new channel, or one whose metadata was lost (Redis restarted without its data): a new epoch, so no
    -- client resumes onto reused offsets. Leftovers of the old life go.
    chid = redis.call('INCR', P .. ':chanid')
    epoch = candidate
    redis.call('DEL', hk, P .. ':s:' .. ch)
    redis.call('HSET', mk, 'id', chid, 'epoch', epoch, 'first', 1, 'last', 0, 'tseq', 0)
    redis.call('HSET', P .. ':ids', ch, chid)
    redis.call('HSET', P .. ':names', chid, ch)
  end
  chid = tonumber(chid)
  local ik = nil
  local dup = nil
  if own_id == '1' then
    ik = P .. ':i:' .. chid .. ':' .. id
    local prev = redis.call('GET', ik)
    if prev then
      local sp = string.find(prev, ' ', 1, true)
      if sp and string.sub(prev, 1, sp - 1) == epoch then dup = tonumber(string.sub(prev, sp + 1)) end
    end
  end
  if dup then
    out[#out + 1] = {dup, epoch, 1, 0, 0, chid}
  else
    local seq = redis.call('INCR', P .. ':seq')
    local off = redis.call('HINCRBY', mk, 'last', 1)
    redis.call('XADD', hk, off .. '-' .. seq, 's', seq, 't', now, 'i', id, 'n', name, 'd', data)
    if ik then redis.call('SET', ik, epoch .. ' ' .. off, 'PX', max_age) end
    if op == '1' then
      -- The value keeps the name of the event that set it; a NUL cannot occur in JSON text.
      redis.call('HSET', P .. ':s:' .. ch, skey, name .. '\0' .. sval)
    elseif op == '2' then
      redis.call('HDEL', P .. ':s:' .. ch, skey)
    end
    local header = table.concat({seq, off, chid, now, op, #epoch, #id, #name, #skey, #sval}, ',')
    redis.call('PUBLISH', P .. ':c:' .. ch, header .. '|' .. epoch .. id .. name .. skey .. sval .. data)
    out[#out + 1] = {off, epoch, 0, seq, now, chid}
    touched[ch] = {max_events, max_age}
    redis.call('SET', P .. ':time', now)
  end
end
for ch, lim in pairs(touched) do
  local mk, hk = P .. ':m:' .. ch, P .. ':h:' .. ch
  redis.call('HSET', mk, 'age', lim[2])
  local excess = redis.call('XLEN', hk) - lim[1]
  if excess > 0 then
    local old = redis.call('XRANGE', hk, '-', '+', 'COUNT', excess)
    trimmed_through(mk, old[#old][1])
    redis.call('XTRIM', hk, 'MAXLEN', lim[1])
  end
  index_expiry(ch, hk, lim[2])
end
return out
"#;

/// Drops events older than their channel's age limit, for at most `ARGV[2]` channels that are due. Returns how
/// many channels it looked at.
const SWEEP: &str = r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', P .. ':expiry', '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, ch in ipairs(due) do
  local mk, hk = P .. ':m:' .. ch, P .. ':h:' .. ch
  local age = tonumber(redis.call('HGET', mk, 'age') or '0')
  local cutoff = now - age
  local last_old = nil
  local done = false
  while not done do
    local start = '-'
    if last_old then start = '(' .. last_old end
    local page = redis.call('XRANGE', hk, start, '+', 'COUNT', 100)
    if #page == 0 then break end
    for _, e in ipairs(page) do
      if tonumber(field(e[2], 't')) < cutoff then last_old = e[1] else done = true break end
    end
  end
  if last_old then
    trimmed_through(mk, last_old)
    local off = split_id(last_old)
    redis.call('XTRIM', hk, 'MINID', (off + 1) .. '-0')
  end
  index_expiry(ch, hk, age)
end
return #due
"#;

/// One channel's position and events in `(after, upto]`, read together. `ARGV`: prefix, channel, after, upto
/// (empty: the last offset), most events. Returns false for an unknown channel, else
/// `{{id, epoch, first, last, trimmed seq}, {{stream id, seq, time, event id, name, data}...}}`.
const RANGE: &str = r#"
local ch = ARGV[2]
local meta = redis.call('HMGET', P .. ':m:' .. ch, 'id', 'epoch', 'first', 'last', 'tseq')
if not meta[1] then return false end
local after = tonumber(ARGV[3])
local upto = tonumber(meta[4])
if ARGV[4] ~= '' and tonumber(ARGV[4]) < upto then upto = tonumber(ARGV[4]) end
local count = tonumber(ARGV[5])
local events = {}
if count > 0 and upto > after then
  local page = redis.call('XRANGE', P .. ':h:' .. ch, (after + 1) .. '-0', upto, 'COUNT', count)
  for _, e in ipairs(page) do
    local f = e[2]
    events[#events + 1] = {e[1], field(f, 's'), field(f, 't'), field(f, 'i'), field(f, 'n'), field(f, 'd')}
  end
end
return {{tonumber(meta[1]), meta[2], tonumber(meta[3]), tonumber(meta[4]), tonumber(meta[5])}, events}
"#;

/// Every channel's position. `ARGV`: prefix. Returns `{name, id, epoch, first, last, trimmed seq}...`.
const CHANNELS: &str = r#"
local out = {}
for _, ch in ipairs(redis.call('HKEYS', P .. ':ids')) do
  local m = redis.call('HMGET', P .. ':m:' .. ch, 'id', 'epoch', 'first', 'last', 'tseq')
  if m[1] then
    out[#out + 1] = {ch, tonumber(m[1]), m[2], tonumber(m[3]), tonumber(m[4]), tonumber(m[5])}
  end
end
return out
"#;

/// The positions a subscription starts at, read together with the commit sequence. `ARGV`: prefix, then channel
/// names. Returns `{seq, {{id, epoch, last, {state key, name NUL value...}}...}}` (id 0 for a channel that does
/// not exist).
const POSITIONS: &str = r#"
local seq = tonumber(redis.call('GET', P .. ':seq') or '0')
local out = {}
for i = 2, #ARGV do
  local ch = ARGV[i]
  local m = redis.call('HMGET', P .. ':m:' .. ch, 'id', 'epoch', 'last')
  local state = redis.call('HGETALL', P .. ':s:' .. ch)
  if m[1] then
    out[#out + 1] = {tonumber(m[1]), m[2], tonumber(m[3]), state}
  else
    out[#out + 1] = {0, '', 0, state}
  end
end
return {seq, out}
"#;

/// Highest offset among a channel's retained events committed at or before a sequence. `ARGV`: prefix, channel
/// id, sequence. Returns the offset or false.
const LAST_OFFSET_AT: &str = r#"
local ch = redis.call('HGET', P .. ':names', ARGV[2])
if not ch then return false end
local seq = tonumber(ARGV[3])
local hk = P .. ':h:' .. ch
local before = '+'
while true do
  local page = redis.call('XREVRANGE', hk, before, '-', 'COUNT', 100)
  if #page == 0 then return false end
  for _, e in ipairs(page) do
    local off, s = split_id(e[1])
    if s <= seq then return off end
    before = '(' .. e[1]
  end
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}{body}"))
}

/// See [`PUBLISH`].
pub static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PUBLISH));
/// See [`SWEEP`].
pub static SWEEP_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SWEEP));
/// See [`RANGE`].
pub static RANGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RANGE));
/// See [`CHANNELS`].
pub static CHANNELS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CHANNELS));
/// See [`POSITIONS`].
pub static POSITIONS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(POSITIONS));
/// See [`LAST_OFFSET_AT`].
pub static LAST_OFFSET_AT_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LAST_OFFSET_AT));
