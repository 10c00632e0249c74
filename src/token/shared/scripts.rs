//! The Lua scripts of the shared store: each check-and-write runs atomically in Redis.

/// Exact version comparison in Lua (whose numbers are doubles: 2^53 + 1 would compare equal
/// to 2^53): canonical decimal strings, compared by length, then as text.
pub(super) const LUA_VERSIONS: &str = r"
local function canonical(v)
  return type(v) == 'string' and #v > 0 and #v <= 19 and string.match(v, '^[1-9]%d*$') ~= nil
    and (#v < 19 or v < '9223372036854775807')
end
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
";

/// KEYS[1] the entry; ARGV[1] the largest field read. Returns `{'none'}`, `{'type'}` (another
/// type of key), `{'large'}`, or `{'hash', version, data}`.
pub(super) const READ_SCRIPT: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {'none'} end
if t ~= 'hash' then return {'type'} end
local limit = tonumber(ARGV[1])
if redis.call('HSTRLEN', KEYS[1], 'data') > limit or redis.call('HSTRLEN', KEYS[1], 'version') > 64 then
  return {'large'}
end
local v = redis.call('HMGET', KEYS[1], 'version', 'data')
return {'hash', v[1] or '', v[2] or ''}
";

/// KEYS[1] the entry; ARGV[1] the new version (canonical), ARGV[2] data, ARGV[3] the channel,
/// ARGV[4] what to replace ('' nothing: fenced by version; '*type' a key of another type;
/// '*large' an oversized entry; else the SHA-1 of the distrusted entry's data), ARGV[5] the
/// size limit. Returns 1 when written, 0 when fenced off.
pub(super) const WRITE_SCRIPT_BODY: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
local replace = ARGV[4]
if t ~= 'none' and t ~= 'hash' then
  if replace ~= '*type' then return 0 end
elseif t == 'hash' then
  local cur = redis.call('HGET', KEYS[1], 'version')
  if canonical(cur) and not newer(ARGV[1], cur) then
    if replace == '' then return 0 end
    if replace == '*large' then
      if redis.call('HSTRLEN', KEYS[1], 'data') <= tonumber(ARGV[5]) then return 0 end
    elseif redis.sha1hex(redis.call('HGET', KEYS[1], 'data') or '') ~= replace then
      return 0
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
";

pub(super) const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub(super) const HOLD_SCRIPT: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
end
return 1
";

pub(super) const EXTEND_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// The token request budget: the rate limits' sliding window in Redis, one script for both.
pub(super) use crate::ratelimit::rate::SHARED_WINDOW_SCRIPT as BUDGET_SCRIPT;
