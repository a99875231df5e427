-- One call's viewers across the fleet: records what one instance saw since its last report, then reads the
-- fleet-wide figures, atomically. Times come from Redis's clock, so the instances' clocks need not agree.
--
-- KEYS[1]  sessions watching: sorted set, session -> when its window runs out (ms)
-- KEYS[2]  totals: hash, sessions (started) and peak
-- KEYS[3]  rendition labels: set; each rendition's sessions are the sorted set KEYS[1] .. ':r:' .. label
-- ARGV     retain_ms, keep_ms, n, n x (session, remaining_ms), then per rendition: label, k, k x (session, remaining_ms)
-- Returns  {now, peak, sessions, label, count, label, count, ...} as strings.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local retain, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local i, added = 4, 0
for _ = 1, tonumber(ARGV[3]) do
  -- GT: a window only grows, whichever instance saw the later reload; a new member is a session started.
  added = added + redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[i + 1]), ARGV[i])
  i = i + 2
end
if added > 0 then
  redis.call('HINCRBY', KEYS[2], 'sessions', added)
end
while i <= #ARGV do
  local label, k = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  redis.call('SADD', KEYS[3], label)
  for _ = 1, k do
    redis.call('ZADD', KEYS[1] .. ':r:' .. label, 'GT', now + tonumber(ARGV[i + 1]), ARGV[i])
    i = i + 2
  end
end
-- Sessions stay a while after their window, so a viewer who comes back is not a new session.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retain)
local watching = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local peak = tonumber(redis.call('HGET', KEYS[2], 'peak') or '0')
if watching > peak then
  peak = watching
  redis.call('HSET', KEYS[2], 'peak', peak)
end
local out = {tostring(watching), tostring(peak), redis.call('HGET', KEYS[2], 'sessions') or '0'}
for _, label in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local key = KEYS[1] .. ':r:' .. label
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count = redis.call('ZCARD', key)
  if count == 0 then
    redis.call('SREM', KEYS[3], label)
  else
    table.insert(out, label)
    table.insert(out, tostring(count))
    redis.call('PEXPIRE', key, keep)
  end
end
for k = 1, 3 do
  redis.call('PEXPIRE', KEYS[k], keep)
end
return out
