"""The Lua scripts that make budgets and rate limits atomic across replicas.

Redis runs a script as one step: nothing else touches the keys in between, so "check, then
reserve" cannot interleave between replicas any more than it can inside one event loop. Times
come from Redis' own clock (``TIME``), so replicas with skewed clocks still agree on windows
and expiries. Amounts go in and out as strings (Redis would turn Lua numbers into integers).

Keys of one client (``{prefix}c:{client}:...``):
  holds      ZSET  hold id -> expiry (ms): reservations in flight, released by settle or expiry
  amounts    HASH  hold id -> USD reserved
  day        STRING  USD spent on this UTC day (expires after 40 days)
  month      STRING  USD spent this UTC month (expires after 400 days)
  rate       ZSET  admission id -> time (ms): the sliding minute (expires after it)
  counts     HASH  requests, rejected
  reserved   STRING  USD held by the holds (kept with them: no sum over holds per request)
  settled:ID STRING  a settled hold (a day), so a settle sent twice charges once

Settling runs in batches (one script call per flush for every queued settle), so it builds
its keys from the prefix it is given: routegate's keys are for one Redis or Valkey server (or
a primary with replicas), not for a sharded Redis Cluster.
"""

from __future__ import annotations

__all__ = ["RESERVE", "SETTLE_BATCH"]

# KEYS: holds, amounts, day, month, rate, counts, reserved
# ARGV: amount, hold id, hold ttl ms, daily limit, monthly limit, requests per minute, span ms
# -> {"ok", spent_day, reserved} | {"rate", retry_after_ms} | {"daily"|"monthly", spent, reserved}
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local amount = tonumber(ARGV[1])
local reserved = tonumber(redis.call('GET', KEYS[7]) or '0')
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do
  reserved = reserved - tonumber(redis.call('HGET', KEYS[2], expired[i]) or '0')
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[2], expired[i])
end
if redis.call('ZCARD', KEYS[1]) == 0 or reserved < 0 then reserved = 0 end
local rpm = tonumber(ARGV[6])
local span = tonumber(ARGV[7])
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - span)
  if redis.call('ZCARD', KEYS[5]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
    redis.call('HINCRBY', KEYS[6], 'rejected', 1)
    return {'rate', tostring(tonumber(oldest[2]) + span - now)}
  end
end
local spent_day = tonumber(redis.call('GET', KEYS[3]) or '0')
local spent_month = tonumber(redis.call('GET', KEYS[4]) or '0')
local daily, monthly = tonumber(ARGV[4]), tonumber(ARGV[5])
if daily > 0 and spent_day + reserved + amount > daily then
  redis.call('HINCRBY', KEYS[6], 'rejected', 1)
  return {'daily', tostring(spent_day), tostring(reserved)}
end
if monthly > 0 and spent_month + reserved + amount > monthly then
  redis.call('HINCRBY', KEYS[6], 'rejected', 1)
  return {'monthly', tostring(spent_month), tostring(reserved)}
end
if rpm > 0 then
  redis.call('ZADD', KEYS[5], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[5], span)
end
local ttl = tonumber(ARGV[3])
reserved = reserved + amount
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('SET', KEYS[7], tostring(reserved), 'PX', ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('HINCRBY', KEYS[6], 'requests', 1)
redis.call('PEXPIRE', KEYS[6], 3024000000)
return {'ok', tostring(spent_day), tostring(reserved)}
"""

# ARGV: key prefix, then per settle: client, hold id, USD to charge, day, month
# Each hold is settled once (a marker key for a day): a batch sent again after a timeout (Redis
# had run it) charges nothing twice. The charge stands even when the hold had expired (the
# answer was served), so a slow stream is never free.
SETTLE_BATCH = """
local prefix = ARGV[1]
for i = 2, #ARGV, 5 do
  local base = prefix .. 'c:' .. ARGV[i] .. ':'
  local hold, charged = ARGV[i + 1], ARGV[i + 2]
  if redis.call('SET', base .. 'settled:' .. hold, '1', 'NX', 'EX', 86400) then
    local held = redis.call('HGET', base .. 'amounts', hold)
    if held then
      redis.call('HDEL', base .. 'amounts', hold)
      redis.call('ZREM', base .. 'holds', hold)
      local left = tonumber(redis.call('GET', base .. 'reserved') or '0') - tonumber(held)
      if left < 0 or redis.call('ZCARD', base .. 'holds') == 0 then left = 0 end
      redis.call('SET', base .. 'reserved', tostring(left), 'KEEPTTL')
    end
    if tonumber(charged) ~= 0 then
      redis.call('INCRBYFLOAT', base .. 'day:' .. ARGV[i + 3], charged)
      redis.call('EXPIRE', base .. 'day:' .. ARGV[i + 3], 3456000)
      redis.call('INCRBYFLOAT', base .. 'month:' .. ARGV[i + 4], charged)
      redis.call('EXPIRE', base .. 'month:' .. ARGV[i + 4], 34560000)
    end
  end
end
return 1
"""
