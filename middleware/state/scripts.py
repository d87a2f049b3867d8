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
  settled:ID STRING  a settled hold (a day), so a settle sent twice charges once
"""

from __future__ import annotations

__all__ = ["RESERVE", "SETTLE"]

# KEYS: holds, amounts, day, month, rate, counts
# ARGV: amount, hold id, hold ttl ms, daily limit, monthly limit, requests per minute, span ms
# -> {"ok", spent_day, reserved} | {"rate", retry_after_ms} | {"daily"|"monthly", spent, reserved}
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local amount = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[2], expired[i])
end
local reserved = 0
local held = redis.call('HVALS', KEYS[2])
for i = 1, #held do reserved = reserved + tonumber(held[i]) end
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
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('HINCRBY', KEYS[6], 'requests', 1)
redis.call('PEXPIRE', KEYS[6], 3024000000)
return {'ok', tostring(spent_day), tostring(reserved + amount)}
"""

# KEYS: holds, amounts, day, month, settled marker of this hold
# ARGV: hold id, USD to charge (the real cost, or the reservation when the cost is unknown)
# Idempotent per hold id: a settle the replica sent again (its first try timed out, but Redis
# had run it) charges nothing the second time. The charge stands even when the hold had
# expired (the answer was served), so a slow stream is never free.
SETTLE = """
if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', 86400) then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) ~= 0 then
  redis.call('INCRBYFLOAT', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], 3456000)
  redis.call('INCRBYFLOAT', KEYS[4], ARGV[2])
  redis.call('EXPIRE', KEYS[4], 34560000)
end
return 1
"""
