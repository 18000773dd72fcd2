//! Lua scripts for the updates that must be atomic. Each touches the keys of one channel only
//! (one hash tag), so it runs on one shard in Redis Cluster.
//!
//! KEYS of the channel scripts: members, sockets, user_sockets, subs.

/// ARGV: user_id, user_info, node|socket, max_members.
/// Returns {1|0 first socket of the user, members as a flat list} or {-1} when full.
pub const PRESENCE_JOIN: &str = r#"
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
local n = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
if n == 1 then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[3], ARGV[1])
    return {-1, {}}
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
local first = 0
if n == 1 then first = 1 end
return {first, redis.call('HGETALL', KEYS[1])}
"#;

/// ARGV: user_id, node|socket. Returns 1 when that was the user's last socket.
pub const PRESENCE_LEAVE: &str = r#"
if redis.call('HDEL', KEYS[2], ARGV[2]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[3], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// ARGV: dead node. Removes the node's sockets and count from the channel; returns "1" when
/// that emptied the channel (else "0"), then the user ids whose last socket was there.
pub const REAP_CHANNEL: &str = r#"
local function total()
  local t = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[4])) do t = t + tonumber(v) end
  return t
end
local before = total()
local removed = {}
local prefix = ARGV[1] .. '|'
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local field, uid = all[i], all[i + 1]
  if string.sub(field, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[2], field)
    local n = redis.call('HINCRBY', KEYS[3], uid, -1)
    if n <= 0 then
      redis.call('HDEL', KEYS[3], uid)
      redis.call('HDEL', KEYS[1], uid)
      table.insert(removed, uid)
    end
  end
end
redis.call('HDEL', KEYS[4], ARGV[1])
local vacated = '0'
if before > 0 and total() == 0 then vacated = '1' end
table.insert(removed, 1, vacated)
return removed
"#;

/// KEYS: the channel's subs hash. ARGV: node, count. Sets this node's count and returns the
/// channel's total before and after, so the one node that empties or fills a channel knows.
pub const SUBS_SET: &str = r#"
local before = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do before = before + tonumber(v) end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local n = tonumber(ARGV[2])
if n > 0 then redis.call('HSET', KEYS[1], ARGV[1], n) else redis.call('HDEL', KEYS[1], ARGV[1]) end
return {before, before - old + n}
"#;

/// KEYS: app connections hash. ARGV: node, limit. Counts a connection if the app is under its
/// limit; returns 1 when counted.
pub const CONNECTION_OPEN: &str = r#"
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"#;
